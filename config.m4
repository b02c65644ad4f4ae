dnl matomo_archive_claim is written in Rust: there is nothing for phpize's C rules to compile.
dnl configure finds cargo; Makefile.frag has cargo build the library and puts it in modules/,
dnl from where phpize's own `make install` copies it into PHP's extension_dir. This is the path
dnl PIE takes (phpize, ./configure, make, make install).

PHP_ARG_ENABLE([matomo_archive_claim],
  [whether to build matomo_archive_claim],
  [AS_HELP_STRING([--enable-matomo_archive_claim],
    [Build matomo_archive_claim (with cargo)])],
  [yes])

if test "$PHP_MATOMO_ARCHIVE_CLAIM" != "no"; then
  dnl rustup puts cargo in ~/.cargo/bin, which a sudo or CI shell may not have on PATH.
  AC_PATH_PROG([CARGO], [cargo], [no], [$PATH:$HOME/.cargo/bin])
  if test "$CARGO" = "no"; then
    AC_MSG_ERROR([cargo was not found: install Rust (https://rustup.rs) or put cargo on PATH])
  fi
  if test "$PHP_THREAD_SAFETY" = "yes"; then
    AC_MSG_ERROR([matomo_archive_claim supports non-thread-safe (NTS) PHP only; this PHP is ZTS])
  fi
  dnl ext-php-rs generates its PHP bindings with bindgen, which loads libclang.
  AC_MSG_CHECKING([for libclang (bindgen needs it)])
  matomo_archive_claim_libclang="$LIBCLANG_PATH"
  for f in /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* /usr/lib64/libclang*.so*; do
    test -z "$matomo_archive_claim_libclang" && test -e "$f" && matomo_archive_claim_libclang="$f"
  done
  if test -n "$matomo_archive_claim_libclang"; then
    AC_MSG_RESULT([$matomo_archive_claim_libclang])
  else
    AC_MSG_RESULT([no])
    AC_MSG_WARN([libclang was not found (Debian: apt-get install libclang-dev; else set LIBCLANG_PATH): cargo build will fail])
  fi
  dnl TLS to the database goes through the system's OpenSSL (the openssl crate links it; it
  dnl finds the headers and libraries with pkg-config).
  AC_MSG_CHECKING([for OpenSSL headers and pkg-config (TLS to the database)])
  if test -n "$OPENSSL_DIR"; then
    AC_MSG_RESULT([OPENSSL_DIR=$OPENSSL_DIR])
  elif pkg-config --exists openssl 2>/dev/null; then
    AC_MSG_RESULT([OpenSSL `pkg-config --modversion openssl`])
  else
    AC_MSG_RESULT([no])
    AC_MSG_ERROR([OpenSSL development files were not found (Debian: apt-get install libssl-dev pkg-config; or set OPENSSL_DIR)])
  fi
  dnl Without a C source phpize would make no build directory at all (and shtool complains).
  PHP_ADD_BUILD_DIR([modules])
  PHP_SUBST([CARGO])
  dnl ext-php-rs takes PHP_CONFIG only as a path; --with-php-config may give a bare name.
  MATOMO_ARCHIVE_CLAIM_PHP_CONFIG=`command -v "$PHP_CONFIG" 2>/dev/null || echo "$PHP_CONFIG"`
  PHP_SUBST([MATOMO_ARCHIVE_CLAIM_PHP_CONFIG])
  dnl No PHP_NEW_EXTENSION, so no ext_srcdir: say where the fragment is.
  PHP_ADD_MAKEFILE_FRAGMENT([$abs_srcdir/Makefile.frag], [$abs_srcdir], [$abs_builddir])
fi
