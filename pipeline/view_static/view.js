// The maskstream view page: one tile per stream, fed by one WebSocket.
// Text messages are the state (status and per-stream figures); binary messages are frames:
// 4-byte big-endian meta length, meta JSON {stream, seq}, JPEG. Each frame shown is
// acknowledged with {"ack": stream}; the server sends that stream's next frame only then.
"use strict";

const IDLE_AFTER_S = 2;          // a live stream without frames for this long shows as idle
const RECONNECT_MS = 1000;
const tiles = new Map();         // stream -> tile element
const decoder = new TextDecoder();

function tileFor(stream) {
  let tile = tiles.get(stream);
  if (tile) return tile;
  tile = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  tile.dataset.stream = stream;
  tile.querySelector(".stream-name").textContent = stream;
  tile.querySelector(".frame").alt = `stream ${stream}`;
  tiles.set(stream, tile);
  const container = document.getElementById("tiles");
  const after = [...tiles.keys()].sort().find((other) => other > stream);  // keep tiles sorted by name
  container.insertBefore(tile, after === undefined ? null : tiles.get(after));
  document.getElementById("empty").hidden = true;
  return tile;
}

function figure(value, digits, unit = "") {
  return value === null || value === undefined ? "-" : `${value.toFixed(digits)}${unit}`;
}

function showState(state) {
  document.getElementById("endpoint").textContent = state.endpoint;
  showStatus(state.status.level, state.status.text);
  for (const s of state.streams) {
    const tile = tileFor(s.stream);
    const idle = s.state === "live" && s.idle_s !== null && s.idle_s > IDLE_AFTER_S;
    tile.dataset.state = idle ? "idle" : s.state;
    tile.querySelector(".state-badge").textContent =
      s.state === "ended" ? `ended after ${s.ended_after} frames` : idle ? `no frame for ${s.idle_s.toFixed(0)} s` : "live";
    tile.querySelector(".fps").textContent = figure(s.fps, 1);
    tile.querySelector(".latency").textContent = figure(s.latency_ms, 0, " ms");
    tile.querySelector(".publish-latency").textContent = figure(s.publish_latency_ms, 0, " ms");
    tile.querySelector(".dropped").textContent = s.dropped;
    tile.querySelector(".instances").textContent = figure(s.instances, 1);
    tile.querySelector(".seq").textContent = s.seq === null ? "-" : s.seq;
    const zones = tile.querySelector(".zones");
    if (zones.dataset.shown !== s.zones.join("\n")) {
      zones.replaceChildren(...s.zones.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
      zones.dataset.shown = s.zones.join("\n");
    }
  }
}

function showStatus(level, text) {
  const status = document.getElementById("status");
  status.dataset.level = level;
  status.textContent = text;
}

function showFrame(ws, buffer) {
  const length = new DataView(buffer).getUint32(0);
  const meta = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, length)));
  const jpeg = new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" });
  const tile = tileFor(meta.stream);
  const img = tile.querySelector(".frame");
  const url = URL.createObjectURL(jpeg);
  const done = () => {
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    img.dataset.url = url;
    tile.dataset.seq = meta.seq;
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ack: meta.stream }));
  };
  img.onload = done;
  img.onerror = done;  // a broken frame must not stop its stream
  img.src = url;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    if (typeof event.data === "string") showState(JSON.parse(event.data));
    else showFrame(ws, event.data);
  };
  ws.onclose = () => {
    showStatus("error", `the view server at ${location.host} is gone; retrying`);
    setTimeout(connect, RECONNECT_MS);
  };
}

connect();
