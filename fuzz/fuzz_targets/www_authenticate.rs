//! `WWW-Authenticate` challenges: any header line parses or is rejected without panicking, what
//! parses survives a round trip through its canonical form, and `is_invalid_token` agrees with
//! the parsed challenges.
#![no_main]

use http::{header::WWW_AUTHENTICATE, HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower_client_credentials::__fuzz;
use tower_client_credentials::retry::is_invalid_token;

fn canonical(challenges: &[__fuzz::Challenge]) -> String {
    let mut out = Vec::new();
    for (scheme, token68, params) in challenges {
        let mut text = scheme.clone();
        if let Some(token68) = token68 {
            text.push(' ');
            text.push_str(token68);
        }
        for (i, (name, value)) in params.iter().enumerate() {
            text.push_str(if i == 0 { " " } else { ", " });
            text.push_str(name);
            text.push_str("=\"");
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    text.push('\\');
                }
                text.push(c);
            }
            text.push('"');
        }
        out.push(text);
    }
    out.join(", ")
}

fuzz_target!(|data: &[u8]| {
    let parsed = __fuzz::www_authenticate(data);
    if let Ok(challenges) = &parsed {
        let again = __fuzz::www_authenticate(canonical(challenges).as_bytes());
        assert_eq!(
            again.as_ref(),
            Ok(challenges),
            "round trip of {challenges:?}"
        );
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, value);
        let expected = parsed.is_ok_and(|challenges| {
            challenges.iter().any(|(scheme, _, params)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                    && params
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("error"))
                        .is_some_and(|(_, value)| value == "invalid_token")
            })
        });
        assert_eq!(
            is_invalid_token(StatusCode::UNAUTHORIZED, &headers),
            expected
        );
        assert!(!is_invalid_token(StatusCode::FORBIDDEN, &headers));
    }
});
