//! Secrets as written in a config file (`literal`, `env:NAME`, `file:/path`), resolved
//! once at load into a value whose `Debug` never prints it.

use std::collections::HashMap;
use std::fmt;

/// A resolved secret string. Never logged: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (tests and the CLI build them from flags).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used to sign or verify.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Resolves one configured secret reference.
///
/// `env:NAME` reads from `env` (the injected process environment), `file:PATH` reads the
/// file and trims one trailing newline (a path may begin with `$CREDENTIALS_DIRECTORY/`,
/// as systemd's `LoadCredential=` provides), anything else is the literal secret.
///
/// # Errors
/// A reason that names the variable or path, never the secret.
pub fn resolve(reference: &str, env: &HashMap<String, String>) -> Result<Secret, String> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        match env.get(name) {
            Some(value) => value.clone(),
            None => return Err(format!("environment variable {name} is not set")),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        let path = expand_credentials_dir(path, env)?;
        let mut text = std::fs::read_to_string(&path)
            .map_err(|err| format!("cannot read secret file {path}: {err}"))?;
        // Editors and `echo` add one newline; a secret never ends with one on purpose.
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        text
    } else {
        reference.to_owned()
    };
    if value.is_empty() {
        return Err("secret is empty".to_owned());
    }
    Ok(Secret(value))
}

fn expand_credentials_dir(path: &str, env: &HashMap<String, String>) -> Result<String, String> {
    const VAR: &str = "$CREDENTIALS_DIRECTORY/";
    match path.strip_prefix(VAR) {
        None => Ok(path.to_owned()),
        Some(rest) => match env.get("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(format!("{}/{rest}", dir.trim_end_matches('/'))),
            None => Err(format!(
                "{path} needs CREDENTIALS_DIRECTORY, which is not set (run under systemd with LoadCredential=)"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn literal_env_and_file_secrets_resolve() {
        let dir = std::env::temp_dir().join(format!("hw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "from-file\n").unwrap();
        let env = env(&[
            ("S", "000123"),
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
        ]);
        assert_eq!(resolve("plain", &env).unwrap().expose(), "plain");
        assert_eq!(resolve("env:S", &env).unwrap().expose(), "000123");
        let path = format!("file:{}", dir.join("s").display());
        assert_eq!(resolve(&path, &env).unwrap().expose(), "from-file");
        assert_eq!(
            resolve("file:$CREDENTIALS_DIRECTORY/s", &env)
                .unwrap()
                .expose(),
            "from-file"
        );
    }

    #[test]
    fn unreadable_secrets_name_the_source_not_the_value() {
        let env = env(&[]);
        let err = resolve("env:MISSING", &env).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
        let err = resolve("file:/nonexistent/hw", &env).unwrap_err();
        assert!(err.contains("/nonexistent/hw"), "{err}");
        let err = resolve("file:$CREDENTIALS_DIRECTORY/x", &env).unwrap_err();
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
        assert_eq!(
            format!("{:?}", Secret::new("hunter2")),
            "Secret(<redacted>)"
        );
    }
}
