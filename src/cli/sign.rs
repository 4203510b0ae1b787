//! `hookwarden sign` and `send`: build a provider's signer from a listener config or from
//! flags (through the same validation the listener uses), sign an event file, post it.

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::cli::SignerArgs;
use crate::config::{self, secret};
use crate::listener::config::{ListenerConfig, Provider};
use crate::listener::extract::FieldRef;
use crate::scheme::{Scheme, SigningKey};

/// A provider's scheme and first key, plus where it listens.
pub struct Signer {
    /// The provider's name.
    pub provider: String,
    scheme: Scheme,
    key: Key,
    /// Header the provider's event id is read from, when it is a header: a fresh id is put
    /// there unless `--add-header` gives one.
    id_header: Option<HeaderName>,
    /// `--add-header` values, sent as given.
    extra: Vec<(HeaderName, HeaderValue)>,
    /// `http://<listen>/hooks/<provider>` when built from a config.
    pub default_url: Option<String>,
}

/// What a signer signs with: a shared secret, or (Standard Webhooks `v1a`) the sender's
/// ed25519 secret key.
enum Key {
    Shared(SigningKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl Signer {
    /// Builds the signer named by `args`.
    ///
    /// # Errors
    /// Unreadable or invalid config, unknown provider, missing flags.
    pub fn from_args(args: &SignerArgs, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        if let Some(path) = &args.config {
            let text = config::read_file(path)?;
            let mut config = ListenerConfig::parse(&path.display().to_string(), &text, env)?;
            let name = args.provider.clone().unwrap_or_default();
            let Some(index) = config.providers.iter().position(|p| p.name == name) else {
                let known: Vec<_> = config.providers.iter().map(|p| p.name.as_str()).collect();
                bail!(
                    "no provider {name:?} in {}; configured: {}",
                    path.display(),
                    known.join(", ")
                );
            };
            let listen = config.server.listen;
            let provider = config.providers.swap_remove(index);
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else if listen.is_ipv6() {
                format!("[{}]", listen.ip())
            } else {
                listen.ip().to_string()
            };
            let url = format!("http://{host}:{}/hooks/{}", listen.port(), provider.name);
            return Self::new(provider, Some(url), args, false);
        }
        let (Some(scheme), Some(reference)) = (&args.scheme, &args.secret) else {
            bail!("give --config and --provider, or --scheme and --secret");
        };
        let resolved =
            secret::resolve(reference, env).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
        // Reuse the listener's own validation: build a one-provider config from the flags.
        let mut provider = toml::Table::new();
        let name = args.provider.clone().unwrap_or_else(|| "cli".to_owned());
        provider.insert("name".into(), name.clone().into());
        provider.insert("scheme".into(), scheme.clone().into());
        // A Standard Webhooks secret key signs `v1a`: the provider is checked with its public
        // key, as a receiver would hold it.
        let ed25519 = match resolved.expose().starts_with("whsk_") {
            true => {
                let key = crate::scheme::standard_webhooks::secret_key(resolved.expose())
                    .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
                let public = format!(
                    "whpk_{}",
                    crate::scheme::encode_base64(key.verifying_key().as_bytes())
                );
                provider.insert("public_keys".into(), vec![toml::Value::from(public)].into());
                Some(key)
            }
            false => {
                provider.insert(
                    "secrets".into(),
                    vec![toml::Value::from(resolved.expose())].into(),
                );
                None
            }
        };
        for (key, value) in [
            ("signature_header", &args.header),
            ("prefix", &args.prefix),
            ("encoding", &args.encoding),
        ] {
            if let Some(value) = value {
                provider.insert(key.into(), value.clone().into());
            }
        }
        let mut root = toml::Table::new();
        root.insert(
            "providers".into(),
            vec![toml::Value::Table(provider)].into(),
        );
        let text = toml::to_string(&root)?;
        let mut config = ListenerConfig::parse("command line", &text, &HashMap::new())
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("providers[0].", "--")))?;
        let provider = config.providers.remove(0);
        let mut signer = Self::new(provider, None, args, ed25519.is_some())?;
        if let Some(key) = ed25519 {
            signer.key = Key::Ed25519(Box::new(key));
        }
        Ok(signer)
    }

    /// The signer of `provider` with its first secret, or (`asymmetric`) one whose key the
    /// caller puts in.
    fn new(
        provider: Provider,
        default_url: Option<String>,
        args: &SignerArgs,
        asymmetric: bool,
    ) -> anyhow::Result<Self> {
        let mut extra = Vec::new();
        for text in &args.add_headers {
            let (name, value) = text
                .split_once(':')
                .with_context(|| format!("--add-header {text:?}: write NAME: VALUE"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--add-header {text:?}: invalid header name"))?;
            let value = HeaderValue::from_str(value.trim())
                .with_context(|| format!("--add-header {text:?}: invalid header value"))?;
            extra.push((name, value));
        }
        let given = |h: &HeaderName| extra.iter().any(|(n, _)| n == h);
        if let FieldRef::Header(h) = &provider.event_type
            && !given(h)
        {
            bail!(
                "provider {:?} reads the event type from header {h}; add --add-header '{h}: TYPE'",
                provider.name
            );
        }
        let id_header = match &provider.event_id {
            FieldRef::Header(h) if !given(h) => Some(h.clone()),
            _ => None,
        };
        let key = match provider.keys.into_iter().next() {
            Some(key) => Key::Shared(key),
            // Replaced by the caller with the ed25519 key it checked.
            None if asymmetric => Key::Shared(SigningKey::new(&[])),
            None => bail!(
                "provider {:?} verifies with public keys only: sign as its sender does, with \
                 --scheme standard-webhooks --secret whsk_… (the sender's secret key)",
                provider.name
            ),
        };
        Ok(Self {
            provider: provider.name,
            scheme: provider.scheme,
            key,
            id_header,
            extra,
            default_url,
        })
    }

    /// The headers a provider sends with `body` now; a fresh id where the scheme carries one.
    ///
    /// # Errors
    /// A configured prefix that cannot be a header value.
    pub fn sign(&self, body: &[u8]) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let signed = match (&self.key, &self.scheme) {
            (Key::Shared(key), scheme) => scheme.sign(key, body, SystemTime::now(), &id),
            (Key::Ed25519(key), Scheme::StandardWebhooks(scheme)) => {
                scheme.sign_v1a(key, body, SystemTime::now(), &id)
            }
            (Key::Ed25519(_), other) => bail!("scheme {} has no ed25519 signatures", other.name()),
        };
        let mut headers = signed.map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
        if let Some(h) = &self.id_header {
            headers.push((h.clone(), HeaderValue::from_str(&id)?));
        }
        headers.extend(self.extra.iter().cloned());
        Ok(headers)
    }
}

/// Reads an event file (`-` = standard input) and checks it is JSON.
///
/// # Errors
/// Unreadable file or invalid JSON.
pub fn read_event(path: &std::path::Path) -> anyhow::Result<Bytes> {
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(Bytes::from(bytes))
}
