//! `replog auth`: the token file of a cluster with authentication on (`auth.token_file`).
//!
//! `token create` makes a bearer token, stores its hash and prints the token once (stdout, so
//! `TOKEN=$(replog auth token create ...)` works); `token list` and `token revoke` manage the
//! hashes; `cert grant` gives rights to a client certificate's name. Nodes re-read the file
//! when it changes (within 5 s) or on SIGHUP: copy it to every node.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::CliError;
use super::output::Format;
use crate::auth::{Role, TokenFile};

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Bearer tokens: create (printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Rights of client certificates (by their common name), for --client-cert-auth.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Args, Debug, Clone)]
pub struct FileArg {
    /// The token file (created if missing, mode 0600), the one nodes read as auth.token_file.
    #[arg(
        long,
        env = "REPLOG_AUTH__TOKEN_FILE",
        default_value = "replog-tokens.yaml"
    )]
    pub file: PathBuf,
    /// Output format. [default: table]
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

#[derive(Args, Debug, Clone)]
pub struct GrantArgs {
    /// Who the token (or certificate) stands for: a user or service name, shown in logs and
    /// errors.
    #[arg(long)]
    pub principal: String,
    /// reader: replay and read checkpoints; writer: also write and create checkpoints; admin:
    /// everything on every tenant (truncation, membership, segments, status details).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// Tenants it may touch (comma list), or `*` for every tenant. Needed for reader and writer;
    /// an admin has every tenant.
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token, store its hash in the file and print the token (only this once).
    Create {
        #[command(flatten)]
        grant: GrantArgs,
        #[command(flatten)]
        file: FileArg,
    },
    /// List the tokens of the file (ids and rights; tokens themselves are not stored).
    List {
        #[command(flatten)]
        file: FileArg,
    },
    /// Remove a token by id: nodes refuse it once they re-read the file (within 5 s).
    Revoke {
        /// The token's id (`token list`; the part after `rlg_` in the token).
        id: String,
        #[command(flatten)]
        file: FileArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Give rights to a client certificate's common name (replacing an earlier grant).
    Grant {
        #[command(flatten)]
        grant: GrantArgs,
        #[command(flatten)]
        file: FileArg,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: crate::auth::AuthError| e.to_string())
}

fn usage(e: crate::auth::AuthError) -> CliError {
    CliError::usage(e.to_string())
}

#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    principal: &'a str,
    role: Role,
    tenants: Vec<String>,
    token: &'a str,
}

#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    principal: &'a str,
    role: Role,
    tenants: &'a [String],
    created: &'a str,
}

pub fn run(cmd: &AuthCommand) -> Result<(), CliError> {
    match cmd {
        AuthCommand::Token(TokenCommand::Create { grant, file }) => {
            let mut f = TokenFile::read(&file.file).map_err(usage)?;
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let (id, token) = f
                .create_token(&grant.principal, grant.role, &grant.tenants, &now)
                .map_err(usage)?;
            f.write(&file.file)
                .map_err(|e| CliError::failure(e.to_string()))?;
            let tenants = f
                .tokens
                .last()
                .map(|t| t.tenants.clone())
                .unwrap_or_default();
            match file.output.unwrap_or(Format::Table) {
                Format::Json => println!(
                    "{}",
                    serde_json::json!(Created {
                        id: &id,
                        principal: &grant.principal,
                        role: grant.role,
                        tenants: tenants.clone(),
                        token: &token,
                    })
                ),
                Format::Table => println!("{token}"),
            }
            eprintln!(
                "token {id} for principal {:?} ({} on {}) added to {}; it is shown only now. Nodes reading this file accept it within 5 s.",
                grant.principal,
                grant.role,
                tenants.join(","),
                file.file.display()
            );
            Ok(())
        }
        AuthCommand::Token(TokenCommand::List { file }) => {
            let f = TokenFile::read(&file.file).map_err(usage)?;
            match file.output.unwrap_or(Format::Table) {
                Format::Json => {
                    for t in &f.tokens {
                        let l = Listed {
                            id: &t.id,
                            principal: &t.principal,
                            role: t.role,
                            tenants: &t.tenants,
                            created: &t.created,
                        };
                        println!("{}", serde_json::json!(l));
                    }
                }
                Format::Table => {
                    let header = ["ID", "PRINCIPAL", "ROLE", "CREATED", "TENANTS"];
                    let mut table = super::output::Table::new(&header);
                    for t in &f.tokens {
                        table.row(vec![
                            t.id.clone(),
                            t.principal.clone(),
                            t.role.to_string(),
                            t.created.clone(),
                            t.tenants.join(","),
                        ]);
                    }
                    println!("{}", table.render());
                }
            }
            Ok(())
        }
        AuthCommand::Token(TokenCommand::Revoke { id, file }) => {
            let mut f = TokenFile::read(&file.file).map_err(usage)?;
            if !f.revoke(id) {
                return Err(CliError::failure(format!(
                    "no token with id {id:?} in {}",
                    file.file.display()
                )));
            }
            f.write(&file.file)
                .map_err(|e| CliError::failure(e.to_string()))?;
            eprintln!(
                "token {id} revoked in {}; nodes reading this file refuse it within 5 s",
                file.file.display()
            );
            Ok(())
        }
        AuthCommand::Cert(CertCommand::Grant { grant, file }) => {
            let mut f = TokenFile::read(&file.file).map_err(usage)?;
            f.grant_certificate(&grant.principal, grant.role, &grant.tenants)
                .map_err(usage)?;
            f.write(&file.file)
                .map_err(|e| CliError::failure(e.to_string()))?;
            eprintln!(
                "client certificates named {:?} may act as {} in {}",
                grant.principal,
                grant.role,
                file.file.display()
            );
            Ok(())
        }
    }
}
