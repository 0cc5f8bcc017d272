//! `relayctl`: the operator CLI of pushrelay.
//!
//! Tenants and their key credentials live in the compacted `pushrelay.tenants` topic;
//! every stage follows it, so changes apply without restarts.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pushrelay_auth::{KeyCredential, SigningKey, mint_token, thumbprint};
use pushrelay_kafka::{KafkaArgs, now_ms};
use pushrelay_proto::v1::Tenant;
use serde_json::{Value, json};

use pushrelay_relayctl::ops::{self, Enable, format_ms, parse_lifetime, parse_time, tenant_id};
use pushrelay_relayctl::store;

/// The pushrelay operator CLI: tenants, their keys, and test tokens.
#[derive(Debug, Parser)]
#[command(name = "relayctl", version)]
struct Cli {
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enable, disable, list and show tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Add and remove a tenant's key credentials.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Tokens for tests and demos.
    #[command(subcommand)]
    Token(TokenCommand),
    /// End-to-end connectivity probe: a synthetic notification through every stage, timed
    /// hop by hop; exits 0 when its delivery receipt comes back delivered, 1 otherwise.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Tenant to probe (its registration, keys and token path are checked).
    #[arg(long, env = "PUSHRELAY_PROBE_TENANT")]
    tenant: String,
    /// The ingress's base URL.
    #[arg(
        long,
        env = "PUSHRELAY_INGRESS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingress: String,
    /// Private key (PKCS#8 PEM or DER) of one of the tenant's registered certificates.
    #[arg(long, env = "PUSHRELAY_PROBE_KEY")]
    key: PathBuf,
    /// That certificate (PEM or DER).
    #[arg(long, env = "PUSHRELAY_PROBE_CERT")]
    cert: PathBuf,
    /// Token issuer (`iss`); default: the registered tenant's.
    #[arg(long)]
    issuer: Option<String>,
    /// Token audience.
    #[arg(long, default_value = "pushrelay")]
    audience: String,
    /// Probe mailbox (default `relay-probe@{tenant}`).
    #[arg(long)]
    mailbox: Option<String>,
    /// How long to wait for the delivery receipt, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_lifetime)]
    timeout: std::time::Duration,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Enable a tenant (creating it if needed): the counterpart of Exchange's
    /// Enable-PushNotificationProxy.
    Enable {
        /// The organisation's domain, e.g. fabrikam.com.
        domain: String,
        /// The `iss` its tokens carry (required when the tenant is new).
        #[arg(long)]
        issuer: Option<String>,
        /// Certificate (PEM) whose key signs its tokens (repeatable).
        #[arg(long = "cert")]
        certs: Vec<PathBuf>,
        /// JWKS metadata URL whose keys are accepted too.
        #[arg(long)]
        metadata_url: Option<String>,
        /// Accepted `aud` (repeatable; default: the relay's audience).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Disable a tenant: its tokens are rejected, its keys kept.
    Disable {
        /// The tenant's domain.
        domain: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Show one tenant with its keys.
    Show {
        /// The tenant's domain.
        domain: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Register a certificate's key (RSA ≥ 2048 bits or EC P-256; not expired; not a duplicate).
    Add {
        /// The tenant's domain.
        domain: String,
        /// Certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// A `kid` tokens may name the key by (besides its x5t thumbprint).
        #[arg(long)]
        kid: Option<String>,
        /// Accept the key from this time (RFC 3339; default: the certificate's start).
        #[arg(long, value_parser = parse_time)]
        not_before: Option<i64>,
        /// Accept the key until this time (RFC 3339; default: the certificate's end).
        #[arg(long, value_parser = parse_time)]
        not_after: Option<i64>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Remove a key by its thumbprint (x5t) or kid.
    Remove {
        /// The tenant's domain.
        domain: String,
        /// Thumbprint or kid, as `tenant show` prints it.
        id: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign an S2S token the way a tenant's server does.
    Mint {
        /// Tenant (`tid`).
        #[arg(long)]
        tenant: String,
        /// Issuer (`iss`).
        #[arg(long)]
        issuer: String,
        /// Private key, PKCS#8 PEM or DER.
        #[arg(long)]
        key: PathBuf,
        /// Certificate of the key (PEM): its thumbprint goes in the `x5t` header.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// `kid` header instead of (or besides) `x5t`.
        #[arg(long)]
        kid: Option<String>,
        /// Audience (`aud`).
        #[arg(long, default_value = "pushrelay")]
        audience: String,
        /// Lifetime, e.g. 30m, 1h (at most 24h).
        #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
        lifetime: std::time::Duration,
        /// Algorithm: RS256, PS256 (RSA keys) or ES256 (P-256 keys).
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        eprintln!("relayctl: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Tenant(TenantCommand::Enable {
            domain,
            issuer,
            certs,
            metadata_url,
            audiences,
            kafka,
        }) => {
            let id = tenant_id(&domain)?;
            let mut keys = Vec::new();
            for path in &certs {
                keys.extend(read_certs(path)?);
            }
            let mut tenants = store::load(&kafka).await?;
            let change = Enable {
                issuer,
                keys,
                metadata_url,
                audiences,
            };
            let tenant = ops::enable(&id, tenants.remove(&id), change, now_ms())?;
            store::save(&kafka, &tenant).await?;
            print_tenant(&tenant, json);
        }
        Command::Tenant(TenantCommand::Disable { domain, kafka }) => {
            let id = tenant_id(&domain)?;
            let mut tenants = store::load(&kafka).await?;
            let tenant = ops::disable(&id, tenants.remove(&id), now_ms())?;
            store::save(&kafka, &tenant).await?;
            print_tenant(&tenant, json);
        }
        Command::Tenant(TenantCommand::List { kafka }) => {
            let tenants = store::load(&kafka).await?;
            if json {
                let list: Vec<Value> = tenants.values().map(tenant_json).collect();
                println!("{}", Value::Array(list));
            } else {
                println!("{:<32} {:<8} {:<5} ISSUER", "TENANT", "ENABLED", "KEYS");
                for t in tenants.values() {
                    println!(
                        "{:<32} {:<8} {:<5} {}",
                        t.id,
                        t.enabled,
                        t.keys.len(),
                        t.issuer
                    );
                }
            }
        }
        Command::Tenant(TenantCommand::Show { domain, kafka }) => {
            let id = tenant_id(&domain)?;
            let tenants = store::load(&kafka).await?;
            let tenant = tenants
                .get(&id)
                .ok_or_else(|| ops::CtlError::UnknownTenant(id.clone()))?;
            print_tenant(tenant, json);
        }
        Command::Key(KeyCommand::Add {
            domain,
            cert,
            kid,
            not_before,
            not_after,
            kafka,
        }) => {
            let id = tenant_id(&domain)?;
            let creds = read_certs(&cert)?;
            let mut tenants = store::load(&kafka).await?;
            let mut tenant = tenants
                .remove(&id)
                .ok_or_else(|| ops::CtlError::UnknownTenant(id.clone()))?;
            for cred in creds {
                let cred = cred
                    .with_key_id(kid.clone())
                    .with_window(not_before, not_after)
                    .context("--not-before must be before --not-after")?;
                tenant = ops::add_key(tenant, &cred, now_ms())?;
            }
            store::save(&kafka, &tenant).await?;
            print_tenant(&tenant, json);
        }
        Command::Key(KeyCommand::Remove {
            domain,
            id: key,
            kafka,
        }) => {
            let id = tenant_id(&domain)?;
            let mut tenants = store::load(&kafka).await?;
            let tenant = tenants
                .remove(&id)
                .ok_or_else(|| ops::CtlError::UnknownTenant(id.clone()))?;
            let tenant = ops::remove_key(tenant, &key, now_ms())?;
            store::save(&kafka, &tenant).await?;
            print_tenant(&tenant, json);
        }
        Command::Probe(args) => {
            let key = std::fs::read(&args.key)
                .with_context(|| format!("reading {}", args.key.display()))?;
            let cert = read_certs(&args.cert)?;
            let thumbprint = cert
                .first()
                .and_then(|c| c.thumbprint.clone())
                .context("no certificate in --cert")?;
            let config = pushrelay_relayctl::probe::ProbeConfig {
                kafka: args.kafka,
                ingress: args.ingress,
                tenant: args.tenant,
                issuer: args.issuer,
                audience: args.audience,
                key,
                thumbprint,
                mailbox: args.mailbox,
                timeout: args.timeout,
            };
            let report = pushrelay_relayctl::probe::run(&config).await;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if !report.succeeded {
                std::process::exit(1);
            }
        }
        Command::Token(TokenCommand::Mint {
            tenant,
            issuer,
            key,
            cert,
            kid,
            audience,
            lifetime,
            alg,
        }) => {
            let id = tenant_id(&tenant)?;
            if lifetime.as_secs() > 24 * 3600 {
                bail!(
                    "--lifetime {}s is over 24h: the relay refuses longer tokens",
                    lifetime.as_secs()
                );
            }
            let bytes =
                std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let signing = SigningKey::from_pkcs8(&bytes)?;
            let mut header = serde_json::Map::new();
            if let Some(cert) = &cert {
                let creds = read_certs(cert)?;
                let first = creds.first().context("no certificate in --cert")?;
                header.insert(
                    "x5t".into(),
                    json!(first.thumbprint.clone().unwrap_or_default()),
                );
            }
            if let Some(kid) = kid {
                header.insert("kid".into(), json!(kid));
            }
            if header.is_empty() {
                bail!("pass --cert (x5t header) or --kid so the relay can choose the key");
            }
            let now = now_ms() / 1000;
            let exp = now + lifetime.as_secs() as i64;
            let claims = json!({"tid": id, "iss": issuer, "aud": audience, "nbf": now - 5, "iat": now, "exp": exp});
            let token = mint_token(&signing, &alg, &header, &claims)?;
            if json {
                println!(
                    "{}",
                    json!({"token": token, "expiresAt": format_ms(exp * 1000)})
                );
            } else {
                println!("{token}");
            }
        }
    }
    Ok(())
}

fn read_certs(path: &PathBuf) -> anyhow::Result<Vec<KeyCredential>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let creds = if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        KeyCredential::from_certificate_pem(&bytes)
    } else {
        KeyCredential::from_certificate_der(&bytes).map(|c| vec![c])
    };
    creds.with_context(|| format!("{} cannot be registered", path.display()))
}

fn tenant_json(tenant: &Tenant) -> Value {
    let keys: Vec<Value> = tenant
        .keys
        .iter()
        .map(|k| {
            let x5t = if k.thumbprint.is_empty() && !k.certificate_der.is_empty() {
                thumbprint(&k.certificate_der)
            } else {
                k.thumbprint.clone()
            };
            json!({
                "thumbprint": x5t,
                "kid": k.key_id,
                "notBefore": format_ms(k.not_before_ms),
                "notAfter": format_ms(k.not_after_ms),
                "validNow": (k.not_before_ms..=k.not_after_ms).contains(&now_ms()),
            })
        })
        .collect();
    json!({
        "tenant": tenant.id,
        "enabled": tenant.enabled,
        "issuer": tenant.issuer,
        "audiences": tenant.audiences,
        "metadataUrl": tenant.metadata_url,
        "keys": keys,
        "updatedAt": format_ms(tenant.updated_time_ms),
    })
}

fn print_tenant(tenant: &Tenant, json: bool) {
    let value = tenant_json(tenant);
    if json {
        println!("{value}");
        return;
    }
    println!("Tenant      : {}", tenant.id);
    println!("Enabled     : {}", tenant.enabled);
    println!("Issuer      : {}", tenant.issuer);
    if !tenant.audiences.is_empty() {
        println!("Audiences   : {}", tenant.audiences.join(", "));
    }
    if !tenant.metadata_url.is_empty() {
        println!("MetadataUrl : {}", tenant.metadata_url);
    }
    println!("Keys        : {}", tenant.keys.len());
    if let Some(keys) = value["keys"].as_array() {
        for key in keys {
            println!(
                "  x5t {}  kid {}  {} .. {}{}",
                key["thumbprint"].as_str().unwrap_or_default(),
                key["kid"].as_str().filter(|k| !k.is_empty()).unwrap_or("-"),
                key["notBefore"].as_str().unwrap_or_default(),
                key["notAfter"].as_str().unwrap_or_default(),
                if key["validNow"].as_bool() == Some(true) {
                    ""
                } else {
                    "  (not valid now)"
                },
            );
        }
    }
}
