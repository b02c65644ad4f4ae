#!/usr/bin/env bash
# Runs a command against a throwaway MariaDB: its own data directory, socket and free port under
# a temporary directory, stopped and removed when the command ends (also on failure or Ctrl-C).
#
#   tests/support/with-mariadb.sh COMMAND [ARGS...]
#
# The command finds the server in MATOMO_ARCHIVE_CLAIM_TEST_DSN, a mysql:// URL of a user that
# may create databases and users, and can restart it (same port, same data) by running
# $MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART. If MATOMO_ARCHIVE_CLAIM_TEST_DSN is already set, no
# server is started and the command runs against the one it names (and cannot restart it).
# MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME='@2026-03-29 01:59:55' starts the server's clock there
# (libfaketime; the clock runs on from it), in the time zone TZ names: a DST change on demand.
# MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS=1 makes a CA, a server certificate (for 127.0.0.1 and
# localhost), a client certificate and a second CA that signed nothing here, all in
# $MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR (ca.pem, server.pem, client.pem, client-key.pem,
# other-ca.pem), and starts the server with them and require_secure_transport = ON: TCP
# connections must use TLS (the socket, local, needs none).
set -euo pipefail

if [[ -n "${MATOMO_ARCHIVE_CLAIM_TEST_DSN:-}" ]]; then
  exec "$@"
fi

for tool in mariadb-install-db mariadbd mariadb-admin php; do
  command -v "$tool" >/dev/null || { echo "with-mariadb: $tool is missing (apt-get install mariadb-server php-cli)" >&2; exit 2; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/matomo-archive-claim-db.XXXXXX")
cleanup() {
  local status=$? pid
  # A server that crashed says why in its error log: keep that where a person can read it.
  if grep -q "got signal\|Segmentation\|Assertion" "$dir/error.log" 2>/dev/null; then
    cp "$dir/error.log" "${TMPDIR:-/tmp}/matomo-archive-claim-crashed-mariadb.log"
    echo "with-mariadb: the server crashed; its log: ${TMPDIR:-/tmp}/matomo-archive-claim-crashed-mariadb.log" >&2
    tail -40 "$dir/error.log" >&2
  fi
  pid=$(cat "$dir/mysqld.pid" 2>/dev/null || true)
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
user_flag=
[[ $(id -u) -eq 0 ]] && user_flag=--user=root

tls_flags=
if [[ "${MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS:-0}" == 1 ]]; then
  command -v openssl >/dev/null || { echo "with-mariadb: openssl is missing (apt-get install openssl)" >&2; exit 2; }
  tls="$dir/tls"
  mkdir "$tls"
  # Two days of validity: long enough for any run, and a leaked key is worth nothing after.
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2)
  {
    openssl req -x509 "${ec[@]}" -keyout "$tls/ca-key.pem" -out "$tls/ca.pem" -subj "/CN=archive-claim test CA"
    openssl req -x509 "${ec[@]}" -keyout "$tls/other-ca-key.pem" -out "$tls/other-ca.pem" -subj "/CN=archive-claim other CA"
    openssl req -x509 "${ec[@]}" -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" \
      -keyout "$tls/server-key.pem" -out "$tls/server.pem" -subj "/CN=127.0.0.1" \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
      -addext "extendedKeyUsage=serverAuth"
    # The client's key in the older PKCS#1 RSA form, as mysql_ssl_rsa_setup and many operators' files have it.
    openssl genrsa -traditional -out "$tls/client-key.pem" 2048
    openssl req -x509 -key "$tls/client-key.pem" -days 2 -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" \
      -out "$tls/client.pem" -subj "/CN=archiver" -addext "basicConstraints=critical,CA:FALSE" \
      -addext "extendedKeyUsage=clientAuth"
  } >"$dir/tls.log" 2>&1 || { cat "$dir/tls.log" >&2; exit 2; }
  tls_flags="--ssl-ca=$tls/ca.pem --ssl-cert=$tls/server.pem --ssl-key=$tls/server-key.pem --require-secure-transport=ON"
  # MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS_VERSION=TLSv1.2: a server that offers only that version,
  # where a client's ssl_cipher list decides whether they agree at all.
  tls_flags+="${MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS_VERSION:+ --tls-version=$MATOMO_ARCHIVE_CLAIM_TEST_DB_TLS_VERSION}"
  export MATOMO_ARCHIVE_CLAIM_TEST_TLS_DIR="$tls"
fi

# libfaketime itself, not the faketime command: the command names a semaphore and a shared-memory
# file after its own pid and leaves them behind when killed, and a later command that gets that pid
# fails ("sem_open: File exists"), as a test run on a long-lived machine did.
faketime_library=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [[ -n "${MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME:-}" && ! -f $faketime_library ]]; then
  echo "with-mariadb: $faketime_library is missing (apt-get install faketime)" >&2
  exit 2
fi

mariadb-install-db --no-defaults --datadir="$dir/data" $user_flag \
  --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve >"$dir/install.log" 2>&1 \
  || { cat "$dir/install.log" >&2; exit 2; }

# start: runs the server in the background and waits until it answers; restart: stops it
# cleanly, then starts it again on the same port with the same data.
cat >"$dir/start" <<START
#!/usr/bin/env bash
set -e
${MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME:+LD_PRELOAD=$faketime_library FAKETIME='$MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME' FAKETIME_DONT_FAKE_MONOTONIC=1} \\
mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" --port="$port" \\
  --bind-address=127.0.0.1 $user_flag --skip-name-resolve --pid-file="$dir/mysqld.pid" \\
  --log-error="$dir/error.log" --max-connections=400 --innodb-buffer-pool-size=256M \\
  --innodb-log-file-size=64M --innodb-flush-log-at-trx-commit="${MATOMO_ARCHIVE_CLAIM_TEST_FLUSH:-2}" \\
  --skip-log-bin $tls_flags >>"$dir/error.log" 2>&1 </dev/null &
for _ in \$(seq 1 200); do
  mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -uroot ping >/dev/null 2>&1 && exit 0
  sleep 0.05
done
echo "MariaDB did not start; see $dir/error.log" >&2
tail -5 "$dir/error.log" >&2
exit 2
START
cat >"$dir/restart" <<RESTART
#!/usr/bin/env bash
set -e
pid=\$(cat "$dir/mysqld.pid")
kill "\$pid"
while kill -0 "\$pid" 2>/dev/null; do sleep 0.02; done
exec "$dir/start"
RESTART
chmod +x "$dir/start" "$dir/restart"
"$dir/start"

password="test-$RANDOM$RANDOM"
mariadb --no-defaults --socket="$dir/mysqld.sock" -uroot -e "
  CREATE USER 'admin'@'%' IDENTIFIED BY '$password';
  GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION;"

export MATOMO_ARCHIVE_CLAIM_TEST_DSN="mysql://admin:$password@127.0.0.1:$port/"
export MATOMO_ARCHIVE_CLAIM_TEST_SOCKET="$dir/mysqld.sock"
export MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART="$dir/restart"
"$@"
