//! One write of 100 bytes, the same way for both systems: a unary gRPC call over a tonic
//! channel (one HTTP/2 connection, shared by the clones of the channel).

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::proto::etcd::PutRequest;
use crate::proto::etcd::kv_client::KvClient;
use crate::proto::replog::log_service_client::LogServiceClient;
use crate::proto::replog::{Operation, WriteRequest};

/// Bytes of every value written.
pub const VALUE_BYTES: usize = 100;
/// The tenant of replog's writes.
pub const TENANT: &str = "bench";
/// A call that has not been answered in this time fails (and is retried, counted as an error).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Replog,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Replog => "replog",
            System::Etcd => "etcd",
        }
    }
}

/// Opens one HTTP/2 connection to `addr` ("host:port", plaintext), with Nagle off.
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
}

/// A client of one system over one (shared) connection.
pub enum Writer {
    Replog(LogServiceClient<Channel>),
    Etcd(KvClient<Channel>),
}

impl Writer {
    pub fn new(system: System, channel: Channel) -> Self {
        match system {
            System::Replog => Writer::Replog(LogServiceClient::new(channel)),
            System::Etcd => Writer::Etcd(KvClient::new(channel)),
        }
    }

    /// Writes `value` and waits for the acknowledgement: replog `Write` of one entry (tenant
    /// [`TENANT`]), or etcd `Put` of a key unique to this client and sequence number.
    pub async fn write(
        &mut self,
        client: usize,
        seq: u64,
        value: Vec<u8>,
    ) -> Result<(), tonic::Status> {
        match self {
            Writer::Replog(c) => {
                c.write(WriteRequest {
                    tenant: TENANT.to_owned(),
                    operation: Operation::Insert as i32,
                    data: value,
                    producer_id: None,
                    producer_seq: None,
                })
                .await?;
            }
            Writer::Etcd(c) => {
                c.put(PutRequest {
                    key: format!("bench/{client:04}/{seq:012}").into_bytes(),
                    value,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }
}

/// Pseudo-random (incompressible) values, different for every client.
pub struct Values(u64);

impl Values {
    pub fn new(client: usize) -> Self {
        Values(0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }

    pub fn next_value(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(VALUE_BYTES);
        while v.len() < VALUE_BYTES {
            // xorshift64
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let take = (VALUE_BYTES - v.len()).min(8);
            v.extend_from_slice(&self.0.to_le_bytes()[..take]);
        }
        v
    }
}
