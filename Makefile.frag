# Appended by phpize's configure to its Makefile (see config.m4). cargo builds the release
# library; phpize's install-modules copies modules/* into $(INSTALL_ROOT)$(EXTENSION_DIR).

# An inherited CARGO_TARGET_DIR (CI sharing one build) wins over the checkout's own target/.
CARGO_TARGET_DIR ?= $(srcdir)/target
MATOMO_ARCHIVE_CLAIM_SOURCES = $(srcdir)/Cargo.toml $(srcdir)/Cargo.lock $(srcdir)/build.rs $(wildcard $(srcdir)/src/*.rs)

all: modules/matomo_archive_claim.so
build-modules: modules/matomo_archive_claim.so

# Rebuilt only when a source changed, so `sudo make install` after `make` never runs cargo as
# root. PHP and PHP_CONFIG make ext-php-rs build against the PHP this configure chose.
modules/matomo_archive_claim.so: $(MATOMO_ARCHIVE_CLAIM_SOURCES)
	cd $(srcdir) && PHP="$(PHP_EXECUTABLE)" PHP_CONFIG="$(MATOMO_ARCHIVE_CLAIM_PHP_CONFIG)" CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)" \
		"$(CARGO)" build --release --locked
	@mkdir -p modules
	cp "$(CARGO_TARGET_DIR)/release/libmatomo_archive_claim.so" $@

# phpize's clean deletes every *.so and *.a below this directory, cargo's build-script outputs
# included, which would leave cargo's cache pointing at files that are gone: clean it whole.
clean: matomo-archive-claim-cargo-clean
matomo-archive-claim-cargo-clean:
	cd $(srcdir) && CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)" "$(CARGO)" clean

.PHONY: matomo-archive-claim-cargo-clean
