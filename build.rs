//! Records the PHP version the extension is built against (shown by phpinfo()), and lets the
//! cdylib leave PHP's symbols unresolved on macOS, where the linker would otherwise refuse.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PHP");
    println!("cargo:rerun-if-env-changed=PHP_CONFIG");
    let php = std::env::var("PHP").unwrap_or_else(|_| "php".to_owned());
    let version = Command::new(&php)
        .args(["-r", "echo PHP_VERSION;"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MATOMO_ARCHIVE_CLAIM_PHP_VERSION={version}");

    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-cdylib-link-arg=-undefined");
        println!("cargo:rustc-cdylib-link-arg=dynamic_lookup");
    }
}
