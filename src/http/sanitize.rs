//! The one sanitiser for text a server sends: what of it may go into an error or a log line, so
//! that neither ever carries a control character (a forged log line), an unbounded string, or a
//! secret the server quoted back.
//!
//! A server may echo what it was sent: an `error_description` quoting the client secret, an
//! `error_uri` or a redirect `Location` carrying the Basic credentials, an issuer string with
//! CR/LF/ESC. [`Secrets`] knows every form in which the crate's secrets travel and [`Secrets::clean`]
//! replaces each with `[redacted]` before anything else is done with the text.

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// What a redacted secret is replaced with.
const REDACTED: &str = "[redacted]";

/// Every form in which the secrets of one request could come back in a server's text: raw,
/// form-urlencoded (with `+` or `%20` for a space, upper- or lower-case hex), inside the Basic
/// credentials (base64 of `id:secret`, padded or not, standard or URL-safe alphabet), and a JWT
/// client assertion. Zeroized on drop; `Debug` shows only how many forms it holds.
#[derive(Default)]
pub(crate) struct Secrets {
    forms: Vec<SecretString>,
}

impl Secrets {
    /// No secrets: text is still cleaned of control characters and bounded.
    pub(crate) fn none() -> Self {
        Secrets::default()
    }

    /// The client secret of `client_id`, in every form a token request sends it.
    pub(crate) fn client_secret(client_id: &str, secret: &SecretString) -> Self {
        let mut secrets = Secrets::none();
        let secret = secret.expose_secret();
        secrets.add(secret);
        let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        // RFC 6749 §2.3.1 form-encodes both parts before base64; some servers (and the echo
        // of one that decoded them) use the raw parts.
        for credentials in [
            SecretString::from(format!("{}:{}", form(client_id), form(secret))),
            SecretString::from(format!("{client_id}:{secret}")),
        ] {
            let bytes = credentials.expose_secret().as_bytes();
            for engine in [
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                // Unpadded: a prefix of the padded form, so both are caught.
                let encoded = SecretString::from(engine.encode(bytes));
                secrets.add(encoded.expose_secret());
            }
        }
        secrets
    }

    /// Adds `secret` (e.g. a JWT client assertion) in its raw and URL-encoded forms. A JWT's
    /// signature is added on its own too: it is the part that cannot be recomputed.
    pub(crate) fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let with_percent_space = encoded.replace('+', "%20");
        for form in [
            secret.to_string(),
            lower_hex(&encoded),
            lower_hex(&with_percent_space),
            encoded,
            with_percent_space,
        ] {
            if !self.forms.iter().any(|f| f.expose_secret() == form) {
                self.forms.push(SecretString::from(form));
            }
        }
        let mut parts = secret.split('.');
        if let (Some(_), Some(_), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if signature.len() >= 16 {
                self.add(signature);
            }
        }
        // Longest first, so that a form containing another is replaced whole.
        self.forms
            .sort_by_key(|f| std::cmp::Reverse(f.expose_secret().len()));
    }

    /// Server text made safe to keep: every form of every secret replaced by `[redacted]`,
    /// control and bidirectional-formatting characters escaped (`\n`, `\u{1b}`), at most `max`
    /// characters (then `…`).
    pub(crate) fn clean(&self, text: &str, max: usize) -> String {
        // Redact first, on the text as sent: escaping could otherwise split a secret that holds
        // a character it escapes. Escaping only inserts, so it cannot join a secret back.
        let mut redacted = std::borrow::Cow::Borrowed(text);
        for form in &self.forms {
            let form = form.expose_secret();
            if redacted.contains(form) {
                redacted = std::borrow::Cow::Owned(redacted.replace(form, REDACTED));
            }
        }
        let mut out = String::with_capacity(redacted.len().min(max.saturating_mul(4)));
        for (kept, c) in redacted.chars().enumerate() {
            if kept == max {
                out.push('…');
                break;
            }
            if needs_escape(c) {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("forms", &self.forms.len())
            .finish()
    }
}

/// Characters that could forge or hide log lines: C0/C1 controls (CR, LF, ESC...), the Unicode
/// line and paragraph separators, and bidirectional-formatting overrides.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// `text` with the hex digits of its `%XX` escapes in lower case.
fn lower_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hex_left = 0;
    for c in text.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            if c == '%' {
                hex_left = 2;
            }
            out.push(c);
        }
    }
    out
}

/// Text from the server that cannot hold a secret of ours (a content type, a metadata document),
/// made safe to keep: see [`Secrets::clean`].
pub(crate) fn clean(text: &str, max: usize) -> String {
    Secrets::none().clean(text, max)
}

/// A body's size for an error, without its content: `empty` or `N-byte`.
pub(crate) fn describe_len(len: usize) -> String {
    if len == 0 {
        "empty".to_string()
    } else {
        format!("{len}-byte")
    }
}

/// A serde_json error reduced to its category and position.
pub(crate) fn strip_serde_detail(e: &serde_json::Error) -> String {
    // serde_json errors can quote a string value (e.g. "invalid type: string \"...\""); keep
    // only the category and position so a token never leaks through it.
    let category = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "wrong or missing fields; `access_token` is required",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{category} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "my client";
    const SECRET: &str = "s3cr:t %+é/=";

    fn secrets() -> Secrets {
        Secrets::client_secret(ID, &SecretString::from(SECRET))
    }

    fn every_form() -> Vec<String> {
        let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = format!("{}:{}", form(ID), form(SECRET));
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE;
        vec![
            SECRET.to_string(),
            form(SECRET),
            form(SECRET).replace('+', "%20"),
            form(SECRET).to_lowercase(),
            format!("Basic {}", b64.encode(&basic)),
            url.encode(&basic),
            b64.encode(format!("{ID}:{SECRET}")),
        ]
    }

    #[test]
    fn every_form_of_the_secret_is_redacted() {
        let secrets = secrets();
        for form in every_form() {
            let text = format!("client authentication failed for `{form}`; see logs");
            let cleaned = secrets.clean(&text, 512);
            assert!(cleaned.contains(REDACTED), "{form} → {cleaned}");
            for other in every_form() {
                assert!(!cleaned.contains(&other), "{other} survives in {cleaned}");
            }
            assert!(!cleaned.contains("s3cr"), "{cleaned}");
        }
    }

    #[test]
    fn a_redirect_location_quoting_the_secret_is_redacted() {
        let secrets = secrets();
        let location = format!(
            "https://evil.example/cb?client_secret={}&x=1",
            form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
        );
        let cleaned = secrets.clean(&location, 300);
        assert_eq!(
            cleaned,
            "https://evil.example/cb?client_secret=[redacted]&x=1"
        );
    }

    #[test]
    fn an_assertion_and_its_signature_are_redacted() {
        let mut secrets = Secrets::none();
        let assertion = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        secrets.add(assertion);
        assert_eq!(secrets.clean(assertion, 512), REDACTED);
        assert_eq!(
            secrets.clean("sig c2lnbmF0dXJlLXNpZ25hdHVyZQ", 512),
            "sig [redacted]"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_length_is_capped() {
        let cleaned = clean("evil\r\n2024-01-01 INFO forged\u{1b}[31m\u{202e}x", 512);
        assert_eq!(
            cleaned,
            "evil\\r\\n2024-01-01 INFO forged\\u{1b}[31m\\u{202e}x"
        );
        assert!(!cleaned.chars().any(needs_escape));
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("abc", 3), "abc");
    }

    #[test]
    fn a_secret_is_redacted_before_the_text_is_cut() {
        let secrets = secrets();
        let cleaned = secrets.clean(&format!("xx{SECRET}"), 5);
        assert!(!cleaned.contains("s3c"), "{cleaned}");
        assert_eq!(secrets.clean(SECRET, 512), REDACTED);
    }

    #[test]
    fn debug_shows_no_form() {
        let debug = format!("{:?}", secrets());
        assert!(!debug.contains("s3cr"), "{debug}");
    }
}
