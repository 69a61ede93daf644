"""Run the maskstream pipeline: the same as ``maskstream run`` (see pipeline/run.py).

    python run_pipeline.py                                   # the embedded default (configs/default.yaml)
    python run_pipeline.py --source ../shared/data/pedestrians_720p.avi --out runs/ped
"""
import sys

from pipeline.run import main

if __name__ == "__main__":
    sys.exit(main())
