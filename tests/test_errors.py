"""Every user-facing error is a MaskstreamError, so entry points catch user mistakes and nothing else."""
import inspect

import models.errors as errors


def test_every_error_class_is_a_maskstream_error_and_nothing_else_is_defined_twice():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 10
    assert all(issubclass(c, errors.MaskstreamError) for c in classes)


def test_modules_raise_the_classes_of_models_errors():
    from models import config, weights
    from pipeline import consumer, keys, protocol, publisher, scheduler, sinks, sources
    assert config.ConfigError is errors.ConfigError and weights.WeightsError is errors.WeightsError
    assert (scheduler.PipelineError, consumer.ConsumerError, keys.CurveKeyError, protocol.ProtocolError,
            publisher.PublisherError, sources.SourceError, sinks.SinkError) == (
        errors.PipelineError, errors.ConsumerError, errors.CurveKeyError, errors.ProtocolError,
        errors.PublisherError, errors.SourceError, errors.SinkError)
