#!/usr/bin/env bash
# Runs a command against a throwaway MariaDB: its own data directory, socket and free port under
# a temporary directory, stopped and removed when the command ends (also on failure or Ctrl-C).
#
#   tests/support/with-mariadb.sh COMMAND [ARGS...]
#
# The command finds the server in MATOMO_ARCHIVE_CLAIM_TEST_DSN, a mysql:// URL of a user that
# may create databases and users. If that variable is already set, no server is started and the
# command runs against the one it names.
set -euo pipefail

if [[ -n "${MATOMO_ARCHIVE_CLAIM_TEST_DSN:-}" ]]; then
  exec "$@"
fi

for tool in mariadb-install-db mariadbd mariadb-admin php; do
  command -v "$tool" >/dev/null || { echo "with-mariadb: $tool is missing (apt-get install mariadb-server php-cli)" >&2; exit 2; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/matomo-archive-claim-db.XXXXXX")
pid=
cleanup() {
  local status=$?
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on right now (the kernel picks it).
port=$(php -r '$s = stream_socket_server("tcp://127.0.0.1:0"); echo explode(":", stream_socket_get_name($s, false))[1];')
user_flag=()
[[ $(id -u) -eq 0 ]] && user_flag=(--user=root)

mariadb-install-db --no-defaults --datadir="$dir/data" "${user_flag[@]}" \
  --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve >"$dir/install.log" 2>&1 \
  || { cat "$dir/install.log" >&2; exit 2; }

mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" --port="$port" \
  --bind-address=127.0.0.1 "${user_flag[@]}" --skip-name-resolve --pid-file="$dir/mysqld.pid" \
  --log-error="$dir/error.log" --max-connections=400 --innodb-buffer-pool-size=256M \
  --innodb-log-file-size=64M --innodb-flush-log-at-trx-commit="${MATOMO_ARCHIVE_CLAIM_TEST_FLUSH:-2}" \
  --skip-log-bin >>"$dir/error.log" 2>&1 &
pid=$!

for _ in $(seq 1 200); do
  mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -uroot ping >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/error.log" >&2; exit 2; }
  sleep 0.05
done

password="test-$RANDOM$RANDOM"
mariadb --no-defaults --socket="$dir/mysqld.sock" -uroot -e "
  CREATE USER 'admin'@'%' IDENTIFIED BY '$password';
  GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION;"

export MATOMO_ARCHIVE_CLAIM_TEST_DSN="mysql://admin:$password@127.0.0.1:$port/"
export MATOMO_ARCHIVE_CLAIM_TEST_SOCKET="$dir/mysqld.sock"
export MATOMO_ARCHIVE_CLAIM_TEST_DB_PID="$pid"
export MATOMO_ARCHIVE_CLAIM_TEST_DB_DIR="$dir"
"$@"
