// Shared checks: the crate's promises about errors built from server input.

use tower_client_credentials::Error;

/// An error's `Display` and `Debug` carry no control character (no forged log lines) and stay
/// bounded whatever the server sent.
pub fn check_error(error: &Error, input_len: usize) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(
            !text.chars().any(char::is_control),
            "control character in an error: {text:?}"
        );
        assert!(
            text.len() <= 4096 + input_len.min(4096),
            "unbounded error text: {} bytes",
            text.len()
        );
    }
}
