//! The one sanitiser for text a server sends: what of it may go into an error, so that an error
//! never carries a control character, an unbounded string or a token quoted back by a parser.

/// Text from the server, made safe to put in an error: no control characters, bounded length.
pub(crate) fn clean(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
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
