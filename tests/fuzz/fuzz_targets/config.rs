//! Configuration parsing on any text: a `Config`, or a `ConfigError` naming a key and what is
//! wrong; and what a valid one prints (`timgate check`) reads back as the same configuration.
//!
//! Texts that could name a device or kernel file (`/dev/zero` as `secret_key_file` reads
//! forever) or hide one behind a TOML `\u` escape are skipped: the files a configuration
//! names are its operator's choice, not input to fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    match Config::from_toml(text) {
        Ok(config) => {
            let printed = config.to_toml();
            let again = match Config::from_toml(&printed) {
                Ok(again) => again,
                Err(e) => panic!("printed configuration does not read back: {e}\n{printed}"),
            };
            assert_eq!(again.to_toml(), printed);
        }
        Err(e) => {
            assert!(!e.key.is_empty(), "{e}");
            assert!(!e.message.is_empty(), "{e}");
        }
    }
});
