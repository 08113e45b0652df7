//! The sanitiser for server text: no control character and a bounded length, whatever it gets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;

fuzz_target!(|data: &[u8]| {
    let Some((&max, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let max = usize::from(max);
    let clean = __fuzz::sanitize(&text, max);
    assert!(!clean.chars().any(char::is_control), "{clean:?}");
    // At most `max` characters of the text and an ellipsis.
    assert!(clean.chars().count() <= max + 1, "{clean:?}");
});
