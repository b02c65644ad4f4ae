# Shared by scripts/test and scripts/demo: packages, build, paths. Source it; do not run it.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian package => a file or command that proves it is installed.
declare -A needed=(
  [php-cli]=/usr/bin/php
  [php-dev]=/usr/bin/php-config
  # phpize's build (scripts/pie-install-check); php-dev brings autoconf, not make.
  [make]=/usr/bin/make
  [php-mysql]=pdo_mysql
  [phpunit]=/usr/bin/phpunit
  [mariadb-server]=/usr/sbin/mariadbd
  [mariadb-client]=/usr/bin/mariadb
  [clang]=/usr/bin/clang
  [libclang-dev]=libclang
  # TLS to the database through the system's OpenSSL (the openssl crate finds it with pkg-config).
  [libssl-dev]=/usr/include/openssl/ssl.h
  [pkg-config]=/usr/bin/pkg-config
  [util-linux]=/usr/bin/unshare
  # A database clock across a DST change (tests/php/DstTest.php).
  [faketime]=/usr/bin/faketime
  [tzdata]=/usr/share/zoneinfo/Europe/Berlin
  # A 3-node Galera cluster (tests/support/GaleraCluster.php): the provider, and rsync for the
  # state transfer that gives a joining node its data.
  [galera-4]=/usr/lib/galera/libgalera_smm.so
  [rsync]=/usr/bin/rsync
  # A real php-fpm worker driven over FastCGI (tests/php/RequestScopeTest.php).
  [php-fpm]=php-fpm
  [libfcgi-bin]=/usr/bin/cgi-fcgi
  # A CA and certificates made per run for the TLS tests (tests/php/TlsTest.php).
  [openssl]=/usr/bin/openssl
  # The end-to-end tests: what ../shared/matomo/install.sh and Matomo 5.2 itself need.
  [php-mbstring]=phpmod:mbstring
  [php-xml]=phpmod:dom
  [php-curl]=phpmod:curl
  [php-gd]=phpmod:gd
  [php-zip]=phpmod:zip
  [php-intl]=phpmod:intl
  [php-bcmath]=phpmod:bcmath
  [xz-utils]=/usr/bin/xz
  [curl]=/usr/bin/curl
  [python3]=/usr/bin/python3
  # The operator's page and the System Check in a real browser (tests/php/OperatorPageTest.php).
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
  [python3-selenium]=/usr/lib/python3/dist-packages/selenium
)

missing_packages() {
  local pkg probe modules
  # Read once: `php -m | grep -q` under pipefail fails whenever grep stops reading first.
  modules=$(php -m 2>/dev/null || true)
  for pkg in "${!needed[@]}"; do
    probe=${needed[$pkg]}
    case "$probe" in
      /*) [[ -e "$probe" ]] || echo "$pkg" ;;
      pdo_mysql) grep -qx pdo_mysql <<<"$modules" || echo "$pkg" ;;
      php-fpm) compgen -G "/usr/sbin/php-fpm*" >/dev/null || echo "$pkg" ;;
      phpmod:*) grep -qix "${probe#phpmod:}" <<<"$modules" || echo "$pkg" ;;
      libclang) compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null || echo "$pkg" ;;
    esac
  done | sort
}

ensure_packages() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [[ -z "${missing// }" ]] && return 0
  if [[ $(id -u) -eq 0 ]]; then
    echo "==> installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "Missing packages. Run this once, then try again:" >&2
    echo "  sudo apt-get install -y $missing" >&2
    exit 1
  fi
  command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
}

# Builds the extension; prints nothing but cargo's own lines. $1: debug|release
build_extension() {
  local profile=$1 flag=()
  [[ "$profile" == release ]] && flag=(--release)
  (cd "$root" && cargo build "${flag[@]}" --quiet)
  extension="$root/target/$profile/libmatomo_archive_claim.so"
  export MATOMO_ARCHIVE_CLAIM_EXT=$extension
}
