//! Property tests over the parsers of server input (the same functions as the fuzz targets in
//! `fuzz/`, through the crate's hidden `__fuzz` entry points): arbitrary input never panics,
//! valid token responses round-trip, durations stay bounded, and the sanitiser's output carries
//! no control character. Case counts are modest so that CI stays fast; the fuzz targets search
//! far longer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use proptest::prelude::*;
use secrecy::ExposeSecret;
use tower_client_credentials::__fuzz;
use tower_client_credentials::retry::is_invalid_token;
use tower_client_credentials::Error;

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn response(status: u16, body: Vec<u8>) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .unwrap()
}

/// The crate's promise for an error built from server input: no control character to forge a
/// log line with.
fn assert_clean(error: &Error) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
}

/// JSON values, nested a little: what a hostile server sends in place of a field.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A token response object whose known fields hold anything.
fn hostile_token_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("access_token"),
        Just("token_type"),
        Just("expires_in"),
        Just("scope"),
        Just("error"),
        Just("error_description"),
        Just("error_uri"),
        Just("other"),
    ];
    prop::collection::btree_map(field, json_value(), 0..6)
        .prop_map(|fields| serde_json::to_vec(&fields).unwrap())
}

/// RFC 6750 `b64token`: what a server may issue as a bearer token.
const B64TOKEN: &str = "[A-Za-z0-9._~+/-]{1,64}=*";
/// RFC 6749 scope-token (`%x21 / %x23-5B / %x5D-7E`).
const SCOPE_TOKEN: &str = "[!#-\\[\\]-~]{1,12}";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn token_responses_never_panic_and_their_errors_are_clean(
        status in prop_oneof![Just(200u16), 400u16..600],
        body in prop_oneof![hostile_token_body(), prop::collection::vec(any::<u8>(), 0..64)],
        retry_after in "[ -~]{0,30}",
        expiry_from_jwt in any::<bool>(),
    ) {
        let mut response = response(status, body);
        if let Ok(value) = HeaderValue::from_str(&retry_after) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        match __fuzz::token_response(&response, expiry_from_jwt) {
            Ok(token) => {
                prop_assert!(token.lifetime().is_none_or(|l| l <= CENTURY));
            }
            Err(error) => assert_clean(&error),
        }
    }

    #[test]
    fn valid_token_responses_round_trip(
        access_token in B64TOKEN,
        token_type in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER")],
        expires_in in 1u64..=1_000_000_000,
        expires_in_as_text in any::<bool>(),
        scopes in prop::collection::vec(SCOPE_TOKEN, 0..4),
        extra in prop::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..3),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("access_token".into(), access_token.clone().into());
        body.insert("token_type".into(), token_type.into());
        body.insert(
            "expires_in".into(),
            if expires_in_as_text { expires_in.to_string().into() } else { expires_in.into() },
        );
        let scope = scopes.join(" ");
        if !scopes.is_empty() {
            body.insert("scope".into(), scope.clone().into());
        }
        for (name, value) in &extra {
            body.insert(name.clone(), value.clone());
        }
        let sent = serde_json::to_vec(&body).unwrap();
        let token = __fuzz::token_response(&response(200, sent), false).unwrap();
        prop_assert_eq!(token.secret().expose_secret(), access_token.as_str());
        prop_assert_eq!(token.lifetime(), Some(Duration::from_secs(expires_in)));
        prop_assert_eq!(token.scope(), (!scopes.is_empty()).then_some(scope.as_str()));
        prop_assert_eq!(token.scopes().collect::<Vec<_>>(), scopes.iter().map(String::as_str).collect::<Vec<_>>());
        for (name, value) in &extra {
            // As received: through serde_json's own float parsing, which is not exact.
            let received: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec(value).unwrap()).unwrap();
            prop_assert_eq!(token.extra().get(name), Some(&received));
        }
    }

    #[test]
    fn discovery_documents_never_panic(
        body in prop_oneof![
            prop::collection::btree_map(
                prop_oneof![Just("issuer"), Just("token_endpoint"), Just("token_endpoint_auth_methods_supported")],
                prop_oneof![json_value(), "(https?://)?[ -~]{0,40}".prop_map(serde_json::Value::from)],
                0..4,
            )
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        allow_http in any::<bool>(),
    ) {
        let issuer: http::Uri = "https://auth.example.com/oauth2/default".parse().unwrap();
        let url = "https://auth.example.com/.well-known/oauth-authorization-server/oauth2/default";
        if let Ok(endpoint) = __fuzz::discovery_document(&issuer, allow_http, url, &body) {
            prop_assert!(allow_http || endpoint.scheme_str() == Some("https"));
        }
    }

    #[test]
    fn server_waits_are_bounded(
        retry_after in prop_oneof![
            "[0-9]{1,25}",
            "(Mon|Sun), [0-9]{2} (Jan|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
            "[ -~]{0,30}",
        ],
        remaining in "[0-9]{1,3}|[ -~]{0,5}",
        reset in "[0-9]{1,25}",
        okta_only in any::<bool>(),
        clock in 0u64..=u64::from(u32::MAX),
    ) {
        let mut headers = HeaderMap::new();
        if !okta_only {
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                headers.insert(RETRY_AFTER, value);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&remaining) {
            headers.insert("x-rate-limit-remaining", value);
        }
        headers.insert("x-rate-limit-reset", HeaderValue::from_str(&reset).unwrap());
        let now = UNIX_EPOCH + Duration::from_secs(clock);
        // No panic at any clock; the wait itself is capped by the cache and by
        // `Error::retry_after`, not here.
        let _ = __fuzz::retry_after(&headers, now);
        let _ = __fuzz::retry_after(&headers, SystemTime::now());
    }

    #[test]
    fn www_authenticate_never_panics_and_is_invalid_token_follows_the_challenges(
        line in prop_oneof![
            "[ -~]{0,60}",
            prop::collection::vec(
                ("(Bearer|DPoP|Basic|bearer)", prop::collection::vec(
                    ("(error|realm|error_description|scope)", "[ -~]{0,16}|invalid_token"), 0..3)),
                0..3,
            )
            .prop_map(|challenges| {
                challenges
                    .into_iter()
                    .map(|(scheme, params)| {
                        let params: Vec<String> = params
                            .into_iter()
                            .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                            .collect();
                        format!("{scheme} {}", params.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ],
    ) {
        let parsed = __fuzz::www_authenticate(line.as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_str(&line).unwrap());
        let expected = parsed.is_ok_and(|challenges| {
            challenges.iter().any(|(scheme, _, params)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                    && params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("error"))
                        .is_some_and(|(_, v)| v == "invalid_token")
            })
        });
        prop_assert_eq!(is_invalid_token(StatusCode::UNAUTHORIZED, &headers), expected);
    }

    #[test]
    fn jwt_expiry_never_panics_and_stays_before_2100(
        token in prop_oneof![
            "[ -~]{0,40}",
            (json_value(), "[A-Za-z0-9_-]{0,8}").prop_map(|(claims, sig)| {
                let claims = serde_json::json!({ "exp": claims });
                format!("eyJhbGciOiJub25lIn0.{}.{sig}", base64url(&serde_json::to_vec(&claims).unwrap()))
            }),
        ],
    ) {
        if let Some(exp) = __fuzz::jwt_expiry(&token) {
            prop_assert!(exp <= UNIX_EPOCH + Duration::from_secs(4_102_444_800));
        }
    }

    #[test]
    fn durations_from_untrusted_numbers_stay_within_a_century_and_keep_their_order(
        a in any::<f64>(),
        b in any::<f64>(),
        d in any::<u64>(),
        nanos in 0u32..1_000_000_000,
    ) {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        match (__fuzz::positive_seconds(low), __fuzz::positive_seconds(high)) {
            // A positive number below a nanosecond is a lifetime of zero: an expired token.
            (Some(l), Some(h)) => prop_assert!(l <= h && h <= CENTURY),
            (Some(_), None) => prop_assert!(false, "{low} accepted, {high} refused"),
            (None, Some(h)) => prop_assert!(h <= CENTURY),
            (None, None) => {}
        }
        let duration = Duration::new(d, nanos);
        let clamped = __fuzz::clamp_to_century(duration);
        prop_assert_eq!(clamped, duration.min(CENTURY));
        // A clamped duration can be added to any instant the process will see.
        prop_assert!(std::time::Instant::now().checked_add(clamped).is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_sanitiser_leaves_no_control_character_and_bounds_the_length(
        text in prop_oneof!["\\PC{0,40}", ".{0,40}", "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} a-z]{0,40}"],
        max in 0usize..64,
    ) {
        let clean = __fuzz::sanitize(&text, max);
        prop_assert!(!clean.chars().any(char::is_control), "{:?}", clean);
        // At most `max` characters of the text are kept, and an escaped one is written as at
        // most ten (`\u{10ffff}`), then `…`.
        prop_assert!(clean.chars().count() <= max * 10 + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Server text that quotes the client secret, raw, form-encoded or inside the Basic
    /// credentials, anywhere among arbitrary characters: the kept text holds none of those forms
    /// and no control character. (Secrets are at least 8 characters and hold no `[` or `]`, so
    /// the `[redacted]` marker cannot itself spell one.)
    #[test]
    fn the_sanitiser_never_keeps_a_secret_it_was_given(
        secret in "[A-Za-z0-9 ._~+/=!@#%&*-]{8,24}",
        client_id in "[a-z0-9-]{1,12}",
        prefix in "\\PC{0,20}|[\\x00-\\x1f a-z]{0,20}",
        suffix in "\\PC{0,20}",
        form in 0usize..4,
    ) {
        use base64::Engine as _;
        let encoded: String = url_form(&secret);
        let quoted = match form {
            0 => secret.clone(),
            1 => encoded.clone(),
            2 => base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", url_form(&client_id), encoded)),
            _ => base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}")),
        };
        let text = format!("{prefix}{quoted}{suffix}");
        let kept = __fuzz::sanitize_with_client_secret(&text, &client_id, &secret, 4096);
        prop_assert!(!kept.contains(&secret), "{:?}", kept);
        prop_assert!(!kept.contains(&encoded), "{:?}", kept);
        let basic = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(format!("{}:{}", url_form(&client_id), encoded));
        prop_assert!(!kept.contains(&basic), "{:?}", kept);
        prop_assert!(!kept.chars().any(char::is_control), "{:?}", kept);
    }
}

fn url_form(text: &str) -> String {
    url_encode(text)
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
