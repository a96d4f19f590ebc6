# Shared by the bench scripts (sourced, not run): loopback only, every wait bounded.

# wait_port PORT [TENTHS]: returns 0 once something accepts on 127.0.0.1:PORT, 1 after
# TENTHS tenths of a second (default 100: 10 s) with a message.
wait_port() {
  for _ in $(seq 1 "${2:-100}"); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
