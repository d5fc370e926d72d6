# Sourced by the scripts that start a private tubestored (through a node
# whose XENSTORED_PATH names a socket nothing answers on).
#
# stop_daemon SOCKET: stops the daemon whose pid file is SOCKET.pid and
# waits until it has exited (5 s, then kill -9), so that removing its
# directory next does not race the files it writes as it stops.
stop_daemon() {
  local pidfile="$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 500); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.01
  done
  kill -9 "$pid" 2>/dev/null || true
}
