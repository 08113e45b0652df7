//! Authentication challenges of a `WWW-Authenticate` header (RFC 9110 §11.6.1, formerly
//! RFC 7235 §4.1; the Bearer parameters of RFC 6750 §3): what a 401 says about the token sent.
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! One header line can carry several challenges and their parameters are comma-separated too,
//! so a comma does not say where a challenge ends: a new challenge starts where a token is not
//! followed by `=`. Schemes and parameter names are case-insensitive; values are compared as
//! sent (RFC 6750's error codes are case-sensitive).

use http::header::{HeaderMap, WWW_AUTHENTICATE};

/// One challenge: its scheme and either a token68 or its auth-params (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The auth-scheme as sent (`Bearer`, `DPoP`, `Basic`...); compare case-insensitively.
    pub(crate) fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether the scheme is `scheme`, ignoring ASCII case.
    pub(crate) fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The token68 form's value, for schemes that use it instead of parameters.
    pub(crate) fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }

    /// The first parameter named `name` (ignoring ASCII case), its quoted-string form unescaped.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All parameters in the order sent.
    pub(crate) fn params(&self) -> &[(String, String)] {
        &self.params
    }
}

/// The header line does not follow the challenge grammar; `at` is the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed {
    #[allow(dead_code)] // read through Debug in tests and fuzzing reports
    pub(crate) at: usize,
}

/// Whether an API response is a DPoP nonce challenge (RFC 9449 §9): 401 with a `DPoP` challenge
/// whose `error` is `use_dpop_nonce`. The token is fine; the proof lacked the server's nonce.
pub(crate) fn is_dpop_nonce_challenge(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && challenges(headers)
            .iter()
            .any(|c| c.is_scheme("DPoP") && c.param("error") == Some("use_dpop_nonce"))
}

/// The challenges of every `WWW-Authenticate` line of `headers`, in order. A malformed line
/// contributes nothing: what it meant cannot be known, and guessing is how a description that
/// quotes an error code came to count as that error.
pub(crate) fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|line| parse(line.as_bytes()).ok())
        .flatten()
        .collect()
}

/// Parses one `WWW-Authenticate` header line into its challenges.
pub(crate) fn parse(line: &[u8]) -> Result<Vec<Challenge>, Malformed> {
    let mut parser = Parser {
        input: line,
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        parser.skip_list_separators();
        if parser.at_end() {
            return Ok(challenges);
        }
        challenges.push(parser.challenge()?);
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn malformed(&self) -> Malformed {
        Malformed { at: self.pos }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Empty list elements are allowed (`a, , b`), with optional whitespace around commas.
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.input[start..self.pos])
    }

    fn challenge(&mut self) -> Result<Challenge, Malformed> {
        let scheme = self.token().ok_or(self.malformed())?;
        let mut challenge = Challenge {
            scheme: text(scheme),
            token68: None,
            params: Vec::new(),
        };
        let before_space = self.pos;
        self.skip_whitespace();
        if self.at_end() || self.peek() == Some(b',') {
            return Ok(challenge);
        }
        if self.pos == before_space {
            // `Bearer"x"` or `Bearer/x`: a scheme must be followed by a space.
            return Err(self.malformed());
        }
        if let Some(token68) = self.token68() {
            challenge.token68 = Some(text(token68));
            return Ok(challenge);
        }
        loop {
            let (name, value) = self.auth_param()?;
            challenge.params.push((text(name), value));
            self.skip_whitespace();
            if self.at_end() {
                return Ok(challenge);
            }
            if self.peek() != Some(b',') {
                return Err(self.malformed());
            }
            self.skip_list_separators();
            if self.at_end() || !self.param_follows() {
                return Ok(challenge);
            }
        }
    }

    /// A token68 that makes up the rest of the challenge (up to a comma or the end), or `None`
    /// with the position unchanged: `realm="x"` starts like a token68 but is an auth-param.
    fn token68(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        let mut end = start;
        while self.input.get(end).is_some_and(|&b| is_token68_char(b)) {
            end += 1;
        }
        if end == start {
            return None;
        }
        while self.input.get(end) == Some(&b'=') {
            end += 1;
        }
        let mut after = end;
        while matches!(self.input.get(after), Some(b' ' | b'\t')) {
            after += 1;
        }
        if after < self.input.len() && self.input[after] != b',' {
            return None;
        }
        self.pos = after;
        Some(&self.input[start..end])
    }

    /// Whether the next list element is `name =` (a parameter of the current challenge) rather
    /// than the scheme of a new challenge.
    fn param_follows(&self) -> bool {
        let mut at = self.pos;
        while self.input.get(at).is_some_and(|&b| is_tchar(b)) {
            at += 1;
        }
        if at == self.pos {
            return false;
        }
        while matches!(self.input.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        self.input.get(at) == Some(&b'=')
    }

    fn auth_param(&mut self) -> Result<(&'a [u8], String), Malformed> {
        let name = self.token().ok_or(self.malformed())?;
        self.skip_whitespace();
        if self.peek() != Some(b'=') {
            return Err(self.malformed());
        }
        self.pos += 1;
        self.skip_whitespace();
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            text(self.token().ok_or(self.malformed())?)
        };
        Ok((name, value))
    }

    /// `"..."` with `\x` escapes, unescaped.
    fn quoted_string(&mut self) -> Result<String, Malformed> {
        self.pos += 1; // the opening quote
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.malformed()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(text(&value));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if is_qdtext(b) || b == b'"' || b == b'\\' => value.push(b),
                        _ => return Err(self.malformed()),
                    }
                    self.pos += 1;
                }
                Some(b) if is_qdtext(b) => {
                    value.push(b);
                    self.pos += 1;
                }
                Some(_) => return Err(self.malformed()),
            }
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// RFC 9110 §5.6.4 `qdtext` (with obs-text): anything visible but `"` and `\`, and SP/HTAB.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// Header bytes as text. obs-text (bytes ≥ 0x80) is not UTF-8 by any rule; it is replaced.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn rfc_6750_examples() {
        let c = parse(br#"Bearer realm="example""#).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].is_scheme("bearer"));
        assert_eq!(c[0].param("REALM"), Some("example"));

        let c = parse(
            br#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "example"),
                ("error", "invalid_token"),
                ("error_description", "The access token expired")
            ]
        );
    }

    #[test]
    fn several_challenges_on_one_line() {
        let c = parse(
            br#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme(), "Newauth");
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "apps"),
                ("type", "1"),
                ("title", "Login to \"apps\"")
            ]
        );
        assert_eq!(c[1].scheme(), "Basic");
        assert_eq!(params(&c[1]), [("realm", "simple")]);
    }

    #[test]
    fn token68_bare_schemes_and_empty_elements() {
        let c = parse(b"Negotiate YIIB+w==, NTLM ,, Bearer error=invalid_token").unwrap();
        let schemes: Vec<_> = c.iter().map(Challenge::scheme).collect();
        assert_eq!(schemes, ["Negotiate", "NTLM", "Bearer"]);
        assert_eq!(c[0].token68(), Some("YIIB+w=="));
        assert_eq!(c[1].token68(), None);
        assert_eq!(c[2].param("error"), Some("invalid_token"));
        // By the grammar, `error=` before a comma is a token68, not an empty parameter.
        let c = parse(b"Bearer error=, x").unwrap();
        assert_eq!((c[0].token68(), c[1].scheme()), (Some("error="), "x"));
        assert_eq!(parse(b"").unwrap(), []);
        assert_eq!(parse(b" , ").unwrap(), []);
    }

    #[test]
    fn whitespace_around_equals_and_escapes() {
        let c = parse(br#"DPoP error = "use_dpop_nonce" , algs="ES256 \\ PS256""#).unwrap();
        assert!(c[0].is_scheme("dpop"));
        assert_eq!(c[0].param("error"), Some("use_dpop_nonce"));
        assert_eq!(c[0].param("algs"), Some("ES256 \\ PS256"));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            &br#"Bearer error="unterminated"#[..],
            br#"Bearer error="x" junk"#,
            br#"Bearer error=invalid_token=x"#,
            br#"Bearer"x""#,
            br#"="x""#,
            b"Bearer error=\"a\x01b\"",
            br#"Bearer error="bad \"#,
        ] {
            assert!(parse(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn challenges_of_every_line_and_malformed_lines_skipped() {
        let mut headers = HeaderMap::new();
        headers.append(WWW_AUTHENTICATE, "Basic realm=\"a\"".parse().unwrap());
        headers.append(WWW_AUTHENTICATE, "Bearer error=\"oops".parse().unwrap());
        headers.append(
            WWW_AUTHENTICATE,
            "DPoP error=\"use_dpop_nonce\"".parse().unwrap(),
        );
        let c = challenges(&headers);
        let schemes: Vec<_> = c.iter().map(Challenge::scheme).collect();
        assert_eq!(schemes, ["Basic", "DPoP"]);
    }
}
