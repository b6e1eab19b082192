//! `replog health`: one node's `grpc.health.v1` answer, like `grpc_health_probe`. Used by the
//! container image's `HEALTHCHECK` and by Kubernetes exec probes where the port speaks TLS.

use clap::Args;
use serde::Serialize;
use tonic_health::ServingStatus;

use super::CliError;
use super::client::{ClientArgs, print_json, stdout_line};
use super::output::Format;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The service to ask about; "" (the default) is the node as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Serialize)]
struct Answer {
    endpoint: String,
    /// SERVING, NOT_SERVING, UNKNOWN; or, with `error` saying why, UNREACHABLE (no
    /// connection), SERVICE_UNKNOWN (the node does not know `--service`) or ERROR.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Asks every endpoint once (no retry: a probe answers now); exit 0 only if each is SERVING.
pub async fn run(a: &HealthArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let mut answers = Vec::new();
    let mut endpoints: Vec<String> = Vec::new();
    for e in a.client.endpoints.iter().flat_map(|e| e.split(',')) {
        let e = e.trim();
        if !e.is_empty() && !endpoints.iter().any(|x| x == e) {
            endpoints.push(e.to_owned());
        }
    }
    for endpoint in endpoints {
        let (status, error) = match client.health(&endpoint, &a.service).await {
            Ok(ServingStatus::Serving) => ("SERVING", None),
            Ok(ServingStatus::NotServing) => ("NOT_SERVING", None),
            Ok(ServingStatus::Unknown) => ("UNKNOWN", None),
            Err(e) if e.code() == tonic::Code::NotFound => ("SERVICE_UNKNOWN", Some(e.to_string())),
            Err(e) if e.code() == tonic::Code::Unavailable => ("UNREACHABLE", Some(e.to_string())),
            Err(e) => ("ERROR", Some(e.to_string())),
        };
        answers.push(Answer {
            endpoint,
            status,
            error,
        });
    }
    let serving = answers.iter().all(|x| x.status == "SERVING");
    match a.client.format(Format::Table) {
        Format::Json => {
            print_json(&serde_json::json!({ "serving": serving, "endpoints": answers }))?
        }
        Format::Table => {
            for x in &answers {
                match &x.error {
                    Some(e) => stdout_line(format_args!("{}  {}: {e}", x.endpoint, x.status))?,
                    None => stdout_line(format_args!("{}  {}", x.endpoint, x.status))?,
                }
            }
        }
    }
    if serving {
        Ok(())
    } else {
        // The output says which node is not serving, and why: exit 1 without another message.
        Err(CliError::silent(crate::cli::EXIT_FAILURE))
    }
}
