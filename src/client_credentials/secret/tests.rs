//! The shipped sources: what they read, what they refuse, and that errors name the source but
//! never the content.

use super::*;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcc-secret-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cause(error: &Error) -> &SecretSourceError {
    error
        .cause()
        .and_then(|c| c.downcast_ref::<SecretSourceError>())
        .expect("a SecretSourceError cause")
}

#[tokio::test]
async fn file_secret_drops_one_trailing_line_break() {
    let dir = TempDir::new("trim");
    let path = dir.0.join("secret");
    std::fs::write(&path, "s3cret value\r\n").unwrap();
    let source = FileSecret::new(&path);
    assert_eq!(
        source.secret().await.unwrap().expose_secret(),
        "s3cret value"
    );
    std::fs::write(&path, "two\n\n").unwrap();
    let error = source.secret().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(
        cause(&error).problem().contains("control characters"),
        "{error}"
    );
    assert!(!error.to_string().contains("two"), "{error}");
}

#[tokio::test]
async fn file_secret_errors_name_the_path_never_the_content() {
    let dir = TempDir::new("errors");
    let path = dir.0.join("missing");
    let source = FileSecret::new(&path);
    let error = source.secret().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(!error.is_transient());
    assert_eq!(
        cause(&error).source_name(),
        format!("file {}", path.display())
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );

    std::fs::write(&path, "").unwrap();
    let error = source.secret().await.unwrap_err();
    assert!(cause(&error).problem().contains("empty"), "{error}");

    std::fs::write(&path, [0xff, 0xfe, b'z', b'q', b'9']).unwrap();
    let error = source.secret().await.unwrap_err();
    assert!(cause(&error).problem().contains("UTF-8"), "{error}");
    assert!(!format!("{error:?}").contains("zq9"), "{error:?}");
}

/// Kubernetes updates a secret volume by writing a new directory and swapping the `..data`
/// link to it; the file the user names is a link through `..data`.
#[cfg(unix)]
#[tokio::test]
async fn file_secret_follows_a_kubernetes_style_link_swap() {
    let dir = TempDir::new("swap");
    let version = |n: u32, secret: &str| {
        let v = dir.0.join(format!("..v{n}"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("client-secret"), secret).unwrap();
        let tmp = dir.0.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.0.join("..data")).unwrap();
    };
    version(1, "first-secret");
    std::os::unix::fs::symlink("..data/client-secret", dir.0.join("client-secret")).unwrap();
    let source = FileSecret::new(dir.0.join("client-secret"));
    assert!(!source.changed(), "nothing read yet: nothing to compare");
    assert_eq!(
        source.secret().await.unwrap().expose_secret(),
        "first-secret"
    );
    assert!(!source.changed());

    // Same length, so only the file's identity tells the versions apart.
    version(2, "secnd-secret");
    assert!(source.changed());
    assert_eq!(
        source.secret().await.unwrap().expose_secret(),
        "secnd-secret"
    );
    assert!(!source.changed());
}

#[tokio::test]
async fn a_file_that_appears_is_a_change() {
    let dir = TempDir::new("appears");
    let path = dir.0.join("secret");
    let source = FileSecret::new(&path);
    source.secret().await.unwrap_err();
    assert!(!source.changed());
    std::fs::write(&path, "now-there").unwrap();
    assert!(source.changed());
    assert_eq!(source.secret().await.unwrap().expose_secret(), "now-there");
}

#[tokio::test]
async fn env_secret_names_the_variable() {
    let name = format!("TCC_TEST_SECRET_{:x}", fastrand::u64(..));
    let source = EnvSecret::new(&name);
    let error = source.secret().await.unwrap_err();
    assert_eq!(
        cause(&error).source_name(),
        format!("environment variable {name}")
    );
    assert!(error.to_string().contains("is not set"), "{error}");
    // The variable is unique to this test, so no other test reads or writes it.
    std::env::set_var(&name, "from-the-environment");
    assert_eq!(
        source.secret().await.unwrap().expose_secret(),
        "from-the-environment"
    );
    std::env::remove_var(&name);
}

#[test]
fn debug_shows_the_source_not_the_secret() {
    let fixed = FixedSecret(SecretString::from("hidden-value"));
    assert_eq!(format!("{fixed:?}"), "[redacted]");
    let file = FileSecret::new("/run/secrets/x");
    assert!(format!("{file:?}").contains("/run/secrets/x"));
}
