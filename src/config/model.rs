//! The YAML schema (every key in docs/config.md), one Rust type per YAML
//! mapping.
//!
//! These types mirror the file 1:1 so that serde reports unknown keys and
//! `skiff schema` derives the JSON Schema from the same source. Rules that
//! span several fields (references, duplicates, "not supported yet") live in
//! `validate/`; defaults are applied here so `/config_dump` shows them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Dur;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin server: metrics, readiness, config dump.
    pub admin: Admin,
    /// Process-level settings.
    #[serde(default)]
    pub runtime: Runtime,
    /// One JSON line per request. Off when the section is absent.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    /// DNS servers for `dns:` clusters; the system's (`/etc/resolv.conf`) when absent.
    #[serde(default)]
    pub resolver: Option<Resolver>,
    /// This workload's mesh identity (not supported yet).
    #[serde(default)]
    pub tls: Option<MeshTls>,
    /// How the proxy stops (SIGTERM, `POST /drain`, `POST /shutdown`).
    #[serde(default)]
    pub drain: Drain,
    /// Where the proxy accepts traffic.
    pub listeners: Vec<Listener>,
    /// Where the proxy sends traffic.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port` of the admin server, e.g. `127.0.0.1:15000`. Loopback
    /// unless `allow_remote` is set.
    pub address: String,
    /// Let the admin server bind an address other than loopback (kubelet
    /// probes and Prometheus from outside the pod). Anyone who reaches it can
    /// drain or stop the proxy and read its config. Default false.
    #[serde(default)]
    pub allow_remote: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Tokio worker threads. Default: the CPUs this process may use (cgroup quota respected).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// How long `/ready` waits for every cluster's first discovery answer
    /// before reporting ready anyway (with the empty clusters logged). Default 10s.
    #[serde(default)]
    pub discovery_timeout: Option<Dur>,
}

/// The stop sequence: readiness fails at once; inbound listeners keep
/// accepting for `delay` (endpoint removal takes time to reach the peers),
/// then stop and ask their connections to finish; outbound listeners serve
/// the app until it stops calling; everything in flight may take `timeout`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Default 5s.
    #[serde(default = "default_drain_delay")]
    pub delay: Dur,
    /// Default 30s.
    #[serde(default = "default_drain_timeout")]
    pub timeout: Dur,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            delay: default_drain_delay(),
            timeout: default_drain_timeout(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Serves traffic for the app: stops `drain.delay` after SIGTERM.
    #[default]
    Inbound,
    /// Serves the app's own calls: keeps serving while the app still calls.
    Outbound,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path.
    #[serde(default = "stdout")]
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolver {
    /// DNS servers as `ip:port`.
    pub servers: Vec<String>,
}

/// This workload's mesh identity: the SVID files, re-read when they change.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshTls {
    /// The X.509 SVID chain, leaf first (PEM).
    pub cert: String,
    /// The private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: String,
    /// The trust bundle: one or more roots (PEM).
    pub ca: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge on the same port.
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// `ip:port` to bind; port 0 picks a free port.
    pub address: String,
    /// `inbound` (traffic for the app) or `outbound` (the app's calls): how it drains.
    #[serde(default)]
    pub direction: Direction,
    /// Destination from SO_ORIGINAL_DST (iptables REDIRECT).
    #[serde(default)]
    pub transparent: bool,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Unknown authority / opaque TCP goes to the original destination (transparent listeners).
    #[serde(default)]
    pub passthrough: bool,
    /// Original-destination ports proxied as opaque TCP without protocol detection.
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
    /// Downstream connection limits; safe defaults when absent.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Routing; may be empty on a transparent passthrough listener.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Mesh mTLS (`strict`, `permissive`) or edge TLS (`terminate`); plaintext without.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Who may call what: the first rule that matches decides; when rules
    /// exist and none matches, the request is denied (403).
    #[serde(default)]
    pub authorization: Option<Vec<AuthorizationRule>>,
    /// Every request must carry a valid JWT (`Authorization: Bearer`),
    /// except on routes with `jwt: false`.
    #[serde(default)]
    pub jwt: Option<Jwt>,
    /// A token bucket per key for every request; a route's own `rate_limit` replaces it.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// Downstream limits. Every field has a default chosen for a sidecar.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Largest request head (request line + headers) accepted; larger gets 431. Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients. Default 1024.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 initial stream window in bytes. Default 1 MiB.
    #[serde(default = "default_stream_window")]
    pub initial_stream_window: u32,
    /// HTTP/2 initial connection window in bytes. Default 4 MiB.
    #[serde(default = "default_connection_window")]
    pub initial_connection_window: u32,
    /// Time a client has to send a complete request head (an HTTP/2 client:
    /// its connection preface); for HTTP/1.1 it also bounds the
    /// wait for the next request on a kept-alive connection. Default 30s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Close a downstream connection with no request in flight for this
    /// long (HTTP/2; HTTP/1.1 is bounded by `header_read_timeout`). Default 1h.
    #[serde(default = "default_connection_idle_timeout")]
    pub connection_idle_timeout: Dur,
    /// Time to tell HTTP from other protocols on a transparent listener;
    /// a client silent this long is taken for a server-first protocol. Default 1s.
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout: Dur,
    /// A request whose streams move no byte (either way) for this long is
    /// ended. Default 5m. Long-lived gRPC streams live as long as they move.
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: Dur,
    /// HTTP/2 keep-alive PING interval toward clients. Default 30s.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: Dur,
    /// HTTP/2 control frames (WINDOW_UPDATE, PING, SETTINGS, PRIORITY,
    /// RST_STREAM, ...) a client may send per stream it opens, and once for
    /// the connection; past the cap it gets GOAWAY ENHANCE_YOUR_CALM. Default 100.
    #[serde(default = "default_max_control_frames_per_stream")]
    pub max_control_frames_per_stream: u32,
    /// HTTP/2 control frames a client may send per DATA frame (with a
    /// payload) sent either way. Default 10.
    #[serde(default = "default_max_control_frames_per_data_frame")]
    pub max_control_frames_per_data_frame: u32,
    /// An HTTP/2 client connection whose writes make no progress for this
    /// long (the client does not read) is closed. Default 30s.
    #[serde(default = "default_write_stall_timeout")]
    pub write_stall_timeout: Dur,
    /// Open downstream connections at most. Past it, the connection idle
    /// the longest is asked to finish to make room; when none is idle, the
    /// new connection is closed at once. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
            initial_stream_window: default_stream_window(),
            initial_connection_window: default_connection_window(),
            header_read_timeout: default_header_read_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
            detect_timeout: default_detect_timeout(),
            connection_idle_timeout: default_connection_idle_timeout(),
            keepalive_interval: default_keepalive_interval(),
            max_control_frames_per_stream: default_max_control_frames_per_stream(),
            max_control_frames_per_data_frame: default_max_control_frames_per_data_frame(),
            write_stall_timeout: default_write_stall_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// `host`, `host:port`, `*.suffix` or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name shown by `skiff route` and in logs.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub match_: RouteMatch,
    /// The cluster that serves this route (or `weighted_clusters`).
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Overall timeout of the exchange; none when absent (long streams live).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// When a failed try is tried again; one try when absent.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// `false` skips the listener's JWT check on this route (a public path).
    #[serde(default)]
    pub jwt: Option<bool>,
    /// This route's own rate limit, in place of the listener's.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path prefix, e.g. `/shop.Inventory/`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total tries, the first one included.
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub budget: Option<RetryBudget>,
    /// Largest request body kept for replay; a larger body is not retried. Default 64 KiB.
    #[serde(default)]
    pub replay_buffer_bytes: Option<usize>,
    /// Retry plain-HTTP POST/PATCH on every listed condition, not only when
    /// the request never reached the app. Default false.
    #[serde(default)]
    pub non_idempotent: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base: Dur,
    pub max: Dur,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// The downstream request's protocol (HTTP/2 for gRPC).
    #[default]
    Auto,
    Http1,
    Http2,
}

impl UpstreamProtocol {
    /// The protocol one request is sent with: `auto` follows the version the
    /// downstream request came in (HTTP/2 stays HTTP/2, the rest is HTTP/1.1).
    pub fn resolve(self, downstream: http::Version) -> UpstreamProtocol {
        match (self, downstream) {
            (UpstreamProtocol::Auto, http::Version::HTTP_2) => UpstreamProtocol::Http2,
            (UpstreamProtocol::Auto, _) => UpstreamProtocol::Http1,
            (p, _) => p,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    Random,
    LeastRequest,
    PeakEwma,
    RingHash,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time to establish a TCP connection. Default 1s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default)]
    pub lb: LbPolicy,
    /// ring_hash only: the request header whose value is hashed.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// peak_ewma only: how the latency estimate moves.
    #[serde(default)]
    pub peak_ewma: Option<PeakEwmaConfig>,
    /// Static endpoints: `"ip:port"` or `{address, weight}`.
    #[serde(default)]
    pub endpoints: Option<Vec<EndpointSpec>>,
    /// Endpoints from DNS (A/AAAA or SRV), instead of `endpoints`.
    #[serde(default)]
    pub dns: Option<DnsDiscovery>,
    /// Active health checks (HTTP or gRPC); every endpoint counts as healthy without them.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of endpoints that keep failing.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Caps on requests, pending connects and connections; 1024 each when absent.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Not supported yet.
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    /// Upstream connection pool settings; defaults when absent.
    #[serde(default)]
    pub pool: PoolSettings,
    /// Below this percentage of healthy endpoints, balance over all of them
    /// (a wrong health signal must not take the whole cluster down). Default 50.
    #[serde(default)]
    pub panic_threshold: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeakEwmaConfig {
    /// Time for the estimate to fall to 1/e without new samples. Default 10s.
    #[serde(default = "default_ewma_decay")]
    pub decay: Dur,
    /// The estimate of an endpoint with no samples yet. Default 30ms.
    #[serde(default = "default_ewma_rtt")]
    pub default_rtt: Dur,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Close an upstream connection idle this long. Default 60s.
    #[serde(default = "default_pool_idle_timeout")]
    pub idle_timeout: Dur,
    /// Idle HTTP/1.1 connections kept per endpoint. Default 64.
    #[serde(default = "default_max_idle_per_endpoint")]
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            idle_timeout: default_pool_idle_timeout(),
            max_idle_per_endpoint: default_max_idle_per_endpoint(),
        }
    }
}

impl Cluster {
    /// A cluster with every setting at its default and no endpoints (the
    /// passthrough cluster's, whose endpoints are made per destination).
    pub fn with_defaults(name: impl Into<String>) -> Cluster {
        Cluster {
            name: name.into(),
            protocol: UpstreamProtocol::default(),
            connect_timeout: default_connect_timeout(),
            lb: LbPolicy::default(),
            hash_header: None,
            peak_ewma: None,
            endpoints: None,
            dns: None,
            health_check: None,
            outlier_detection: None,
            circuit_breaker: None,
            tls: None,
            pool: PoolSettings::default(),
            panic_threshold: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EndpointSpec {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

impl EndpointSpec {
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) => a,
            EndpointSpec::Weighted { address, .. } => address,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 1,
            EndpointSpec::Weighted { weight, .. } => *weight,
        }
    }
}

/// Endpoints from DNS: A/AAAA records of `name` with `port`, or SRV records
/// of `srv` (ports and weights from the records). With `srv` and `name` +
/// `port` both given, A/AAAA of `name` is the fallback when SRV has no answer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Re-resolve at least this often; a shorter record TTL refreshes sooner. Default 5s.
    #[serde(default)]
    pub refresh: Option<Dur>,
    #[serde(default)]
    pub srv: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub grpc: Option<GrpcHealthCheck>,
    #[serde(default)]
    pub http: Option<HttpHealthCheck>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default)]
    pub service: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    #[serde(default)]
    pub base_ejection_time: Option<Dur>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Longest ejection, however often an endpoint was ejected. Default 300s.
    #[serde(default)]
    pub max_ejection_time: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_pending: Option<u32>,
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// A listener's `tls`: mesh mTLS (with the top-level `tls` identity), edge
/// TLS with certificates of its own (`terminate`), or plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub mode: ListenerTlsMode,
    /// `terminate`: the default certificate chain, leaf first (PEM); re-read on change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// `terminate`: the default certificate's private key (PEM); re-read on change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `terminate`: more certificates, each served to clients asking for one
    /// of its `domains` by SNI; the default one serves the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCert>,
}

/// A certificate of a `terminate` listener chosen by SNI.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Server names: exact (any case) or `*.example.com` (one label).
    pub domains: Vec<String>,
    /// The certificate chain, leaf first (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTlsMode {
    /// mTLS only: plaintext and peers without a valid mesh certificate are refused.
    Strict,
    /// mTLS or plaintext on the same port, told apart by the first bytes.
    Permissive,
    /// Plaintext only.
    #[default]
    Disabled,
    /// Edge TLS for clients outside the mesh, with `cert` and `key` (and `sni`).
    Terminate,
}

impl ListenerTlsMode {
    /// Whether the mode needs this workload's mesh identity (top-level `tls`).
    pub fn needs_mesh_identity(self) -> bool {
        matches!(self, Self::Strict | Self::Permissive)
    }
}

/// A cluster's `tls`: mesh mTLS to other sidecars, or ordinary TLS to a
/// server outside the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub mode: ClusterTlsMode,
    /// `mesh`: the SPIFFE IDs the upstream may present; any other is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// `simple`: the name the server's certificate must hold (also sent as SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `simple`: a PEM file of roots to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterTlsMode {
    /// mTLS with this workload's identity; the upstream's SPIFFE ID is checked.
    Mesh,
    /// Ordinary TLS, the server checked by `server_name`.
    Simple,
    /// Plaintext (the same as no `tls`).
    Disabled,
}

/// One authorization rule: `allow` or `deny` (exactly one) and what it matches.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AuthorizationMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<AuthorizationMatch>,
}

/// What a rule matches; every condition given must hold, an absent one
/// matches anything.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationMatch {
    /// Verified peer identities (SPIFFE IDs): exact, a prefix ending in `*`,
    /// or `*` for any verified identity. Never matches a plaintext peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Match peers without a verified identity (plaintext).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// Request paths: exact, or a prefix ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods (gRPC calls are POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// JWT validation of a listener's requests (docs/config.md, `jwt`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// The `iss` every token must carry, e.g. `https://auth.shop.example`.
    pub issuer: String,
    /// A token's `aud` must name at least one of these. At least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the verification keys (a JWK Set) come from.
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    #[serde(default = "default_jwt_leeway")]
    pub leeway: Dur,
    /// Claim -> request header, set from the verified token; a copy the
    /// client sent is removed from every request of the listener first.
    #[serde(default)]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Send the `Authorization` header on to the cluster. Default true.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

/// A JWK Set: a file, or a URI fetched through a cluster. Exactly one of `file` and `uri`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// A JWK Set file, re-read when it changes.
    #[serde(default)]
    pub file: Option<String>,
    /// An `https://` (through a cluster with `tls`) or `http://` URI of a JWK Set, fetched through `cluster`.
    #[serde(default)]
    pub uri: Option<String>,
    /// The cluster that serves `uri`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Fetch `uri` again this often. Default 10m.
    #[serde(default)]
    pub refresh: Option<Dur>,
}

/// A token bucket per key (docs/config.md, `rate_limit`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second, per key (fractions allowed: 0.5 is one every 2s).
    pub requests_per_second: f64,
    /// The bucket's size: requests a key may send at once. Default
    /// `requests_per_second` rounded up.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `client_ip`, `header:<name>` or `claim:<name>`. Default `client_ip`.
    #[serde(default = "default_rate_limit_key")]
    pub key: String,
    /// `client_ip` behind load balancers: the address this many hops from
    /// the right of `X-Forwarded-For`. Without it the header is never read.
    #[serde(default)]
    pub xff_trusted_hops: Option<u32>,
    /// Keys tracked at once; past it, new keys share one bucket. Default 100000.
    #[serde(default = "default_rate_limit_max_keys")]
    pub max_keys: usize,
    /// One budget per key across replicas, kept in Redis.
    #[serde(default)]
    pub shared: Option<SharedRateLimit>,
}

impl RateLimit {
    /// The bucket's size: `burst`, or `requests_per_second` rounded up.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            self.requests_per_second
                .ceil()
                .clamp(1.0, f64::from(u32::MAX)) as u32
        })
    }
}

/// What a rate limit's requests are counted by: `key` parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (the TCP peer, or from `X-Forwarded-For`).
    ClientIp,
    /// A request header's value (lower-case name).
    Header(String),
    /// A claim of the verified JWT.
    Claim(String),
}

impl RateLimitKey {
    /// `client_ip`, `header:<name>` or `claim:<name>`; `Err` says what is wrong.
    pub fn parse(key: &str) -> Result<RateLimitKey, String> {
        let form = "write `client_ip`, `header:<name>` or `claim:<name>`";
        if key == "client_ip" {
            return Ok(RateLimitKey::ClientIp);
        }
        if let Some(name) = key.strip_prefix("header:") {
            return match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) => Ok(RateLimitKey::Header(h.as_str().to_string())),
                Err(_) => Err(format!(
                    "`{name}` in `{key}` is not a valid header name (letters, digits, `-`, `_`)"
                )),
            };
        }
        if let Some(name) = key.strip_prefix("claim:") {
            if name.trim().is_empty() {
                return Err(format!("`{key}` names no claim; {form}"));
            }
            return Ok(RateLimitKey::Claim(name.trim().to_string()));
        }
        Err(format!("unknown rate limit key `{key}`; {form}"))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedRateLimit {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis: String,
    /// The longest one check may wait for Redis before the fallback decides. Default 25ms.
    #[serde(default = "default_shared_timeout")]
    pub timeout: Dur,
    /// When Redis cannot be reached: `local` (the local bucket), `allow` or `deny`.
    #[serde(default)]
    pub fallback: RateLimitFallback,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitFallback {
    #[default]
    Local,
    Allow,
    Deny,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_jwt_leeway() -> Dur {
    Dur::from_secs(30)
}
fn default_shared_timeout() -> Dur {
    Dur::from_millis(25)
}
fn default_rate_limit_key() -> String {
    "client_ip".to_string()
}
fn default_rate_limit_max_keys() -> usize {
    100_000
}
fn stdout() -> String {
    "stdout".to_string()
}
fn default_connect_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    1024
}
fn default_stream_window() -> u32 {
    1024 * 1024
}
fn default_connection_window() -> u32 {
    4 * 1024 * 1024
}
fn default_header_read_timeout() -> Dur {
    Dur::from_secs(30)
}
fn default_connection_idle_timeout() -> Dur {
    Dur::from_secs(3600)
}
fn default_detect_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_drain_delay() -> Dur {
    Dur::from_secs(5)
}
fn default_drain_timeout() -> Dur {
    Dur::from_secs(30)
}
fn default_stream_idle_timeout() -> Dur {
    Dur::from_secs(300)
}
fn default_keepalive_interval() -> Dur {
    Dur::from_secs(30)
}
fn default_max_control_frames_per_stream() -> u32 {
    100
}
fn default_max_control_frames_per_data_frame() -> u32 {
    10
}
fn default_write_stall_timeout() -> Dur {
    Dur::from_secs(30)
}
fn default_ewma_decay() -> Dur {
    Dur::from_secs(10)
}
fn default_ewma_rtt() -> Dur {
    Dur::from_millis(30)
}
fn default_pool_idle_timeout() -> Dur {
    Dur::from_secs(60)
}
fn default_max_idle_per_endpoint() -> usize {
    64
}
