use super::*;

const SOURCE: &str = "file /run/tokens/idp";

/// A compact JWS with these claims (the signature is not checked here, only its form).
fn jwt(claims: serde_json::Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        engine.encode(r#"{"alg":"RS256","kid":"platform"}"#),
        engine.encode(claims.to_string()),
        engine.encode([7u8; 64])
    )
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The problem `checked` reports for `assertion`, after checking that the error is a
/// configuration error naming the source and quoting no part of the assertion.
fn problem(assertion: &str) -> String {
    let error = checked(
        SOURCE,
        SecretString::from(assertion.to_string()),
        SystemTime::now(),
    )
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    let shown = format!("{error} {error:?}");
    assert!(shown.contains(SOURCE), "{shown}");
    for part in assertion.split('.').filter(|p| p.len() > 3) {
        assert!(!shown.contains(part), "{shown} quotes {part}");
    }
    let cause = error.cause().unwrap().downcast_ref::<SecretSourceError>();
    assert_eq!(cause.unwrap().source_name(), SOURCE);
    cause.unwrap().problem().to_string()
}

#[test]
fn an_unexpired_signed_jwt_passes_unchanged() {
    let now = SystemTime::now();
    let token = jwt(serde_json::json!({"iss": "platform", "exp": unix(now) + 600}));
    let passed = checked(SOURCE, SecretString::from(token.clone()), now).unwrap();
    assert_eq!(passed.expose_secret(), token);
}

#[test]
fn an_expired_assertion_is_a_configuration_error_naming_the_source() {
    let now = SystemTime::now();
    let expired =
        jwt(serde_json::json!({"sub": "system:serviceaccount:a:b", "exp": unix(now) - 90}));
    let problem = problem(&expired);
    assert!(problem.starts_with("it expired at "), "{problem}");
    assert!(problem.contains("s ago"), "{problem}");
    assert!(!problem.contains("serviceaccount"), "{problem}");
    // `exp` exactly now is expired too: the server would refuse it on arrival.
    let at_now = jwt(serde_json::json!({"exp": unix(now)}));
    assert!(checked(
        SOURCE,
        SecretString::from(at_now),
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix(now))
    )
    .is_err());
}

#[test]
fn what_is_not_a_signed_jwt_with_an_exp_is_refused_by_name() {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let future = unix(SystemTime::now()) + 600;
    assert_eq!(problem(""), "it is empty");
    assert!(problem("a-client-secret-by-mistake-0123456789").contains("not a JWT"));
    assert!(problem("aaaa.bbbb.cccc.dddd.eeee").contains("JWE"));
    assert!(problem("!!!!.bbbb.cccc").contains("header"));
    let unsigned = format!(
        "{}.{}.",
        engine.encode(r#"{"alg":"none"}"#),
        engine.encode(format!(r#"{{"exp":{future}}}"#))
    );
    assert!(problem(&unsigned).contains("not signed"));
    let no_signature = format!(
        "{}.{}.",
        engine.encode(r#"{"alg":"RS256"}"#),
        engine.encode(format!(r#"{{"exp":{future}}}"#))
    );
    assert!(problem(&no_signature).contains("signature"));
    assert!(problem(&jwt(serde_json::json!({"iss": "platform"}))).contains("`exp`"));
    assert!(problem(&jwt(serde_json::json!({"exp": "tomorrow"}))).contains("`exp`"));
}

/// A directory laid out as Kubernetes mounts a projected volume: `token` → `..data/token`,
/// `..data` → a timestamped directory, swapped atomically at every update.
#[cfg(unix)]
struct ProjectedVolume {
    dir: PathBuf,
    version: u32,
}

#[cfg(unix)]
impl ProjectedVolume {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcc-assertion-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        ProjectedVolume { dir, version: 0 }
    }

    /// What the kubelet does: a new directory, a new `..data` link renamed over the old one.
    fn write(&mut self, content: &str) {
        self.version += 1;
        let version = format!("..2026_{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("token"), content).unwrap();
        std::os::unix::fs::symlink(&version, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
    }

    fn token(&self) -> PathBuf {
        self.dir.join("token")
    }
}

#[cfg(unix)]
impl Drop for ProjectedVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_file_assertion_follows_the_volume_swap_at_every_read() {
    let mut volume = ProjectedVolume::new("swap");
    let exp = unix(SystemTime::now()) + 600;
    let first = jwt(serde_json::json!({"n": 1, "exp": exp}));
    let second = jwt(serde_json::json!({"n": 2, "exp": exp}));
    volume.write(&first);
    let source = ClientAssertion::new(Arc::new(FileAssertion::new(volume.token())));
    assert_eq!(source.read().await.unwrap().expose_secret(), first);
    assert!(!source.changed());
    volume.write(&format!("{second}\n"));
    assert!(source.changed(), "the swap is seen without a read");
    assert_eq!(source.read().await.unwrap().expose_secret(), second);
    assert_eq!(source.reload().await.unwrap().expose_secret(), second);
    // Debug and the name show the path, never the content.
    let shown = format!("{source:?} {:?}", FileAssertion::new(volume.token()));
    assert!(
        shown.contains("token") && !shown.contains(&second[..20]),
        "{shown}"
    );
}

#[tokio::test]
async fn a_missing_or_expired_file_names_the_file_as_an_assertion() {
    let path = std::env::temp_dir().join(format!("tcc-assertion-missing-{:x}", fastrand::u64(..)));
    let source = ClientAssertion::new(Arc::new(FileAssertion::new(&path)));
    let error = source.read().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    let message = error.to_string();
    assert!(message.contains("client assertion from file"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");

    let expired = jwt(serde_json::json!({"exp": unix(SystemTime::now()) - 5}));
    std::fs::write(&path, &expired).unwrap();
    let error = source.read().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("expired"),
        "{message}"
    );
    assert!(!message.contains(&expired[..20]), "{message}");
    let _ = std::fs::remove_file(&path);
}
