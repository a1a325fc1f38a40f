//! The ECS runner: one ECS task (Fargate, Fargate Spot, EC2 or external capacity) per job
//! attempt, through `aws-sdk-ecs`, behind the same [`Runner`] contract as `oci` and
//! `process`.
//!
//! - **launch**: `RunTask` on the configured cluster with the task definition chosen for
//!   the job's image, else its queue, else the default; a capacity-provider strategy or a
//!   launch type; awsvpc subnets, security groups and public IP; container overrides
//!   (command; environment = the spec's, the caller's, then `JETRUN_JOB_ID`,
//!   `JETRUN_ATTEMPT`, `TRACEPARENT`); the task's cpu/memory from the job's resources,
//!   checked against Fargate's sizes first ([`fargate`]); tags `jetrun:job-id`,
//!   `jetrun:queue`, `jetrun:attempt`, `jetrun:deployment` (and `jetrun:node`, and the
//!   job's labels); `startedBy` = job id; `group` = the deployment; `clientToken` =
//!   `<job_id>-<attempt>` (hashed past 64 characters).
//! - **Never two tasks for one attempt**: `clientToken` alone is not enough (AWS keeps it
//!   for a limited time, moto ignores it), so before every `RunTask` — the first and each
//!   retry — the runner looks for a task of this attempt (`ListTasks` by `startedBy`, then
//!   its `jetrun:attempt` tag) and adopts it. Launches of one token in one process are
//!   serialised.
//! - **Errors**: `failures[]` by reason (capacity, `RESOURCE:*`, `AGENT` are retried; the
//!   rest is a permanent [`RunnerErrorKind::InvalidSpec`] with the reason); throttling,
//!   `ServerException`, 5xx, timeouts and connection failures are retried with exponential
//!   backoff and full jitter ([`retry`]); client errors (missing task definition, bad
//!   override) are `InvalidSpec` at once. Every `RunTask` first takes a token from the
//!   [`pacer`].
//! - **stop**: `StopTask` with a reason starting `jetrun:` (ECS sends SIGTERM, waits the
//!   task definition's `stopTimeout`, then SIGKILL — `grace` cannot be set per call).
//! - **describe / wait**: from `DescribeTasks` ([`state`]): the job container's exit
//!   code; a task that ended without the job's doing (`SpotInterruption`,
//!   `TaskFailedToStart`, ...) is `NotFound` from `describe` and an error naming the stop
//!   code from `wait`, so the agent reports the attempt `lost` and it is retried, not
//!   failed. `wait` polls every `poll_interval` through one shared poller (`poll.rs`): all
//!   waited-for tasks in one `DescribeTasks` (100 per call) per interval.
//! - **logs / result**: from the task's CloudWatch Logs stream ([`logs`]); the result is
//!   the last `jetrun-result: ` line (decision 23).
//! - **list**: tasks of this deployment (and node, when set) by tag, running or recently
//!   stopped, for adoption after a worker restart.

pub mod fargate;
pub mod logs;
pub mod pacer;
mod poll;
pub mod retry;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride, DesiredStatus,
    KeyValuePair, LaunchType, NetworkConfiguration, Tag, TaskField, TaskOverride,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{LaunchRequest, Runner, RunnerError, RunnerErrorKind, TaskInfo, TaskStatus};
pub use logs::{LogStream, LogsConfig};
pub use pacer::{KvTokenBucket, Pacer, PacerConfig, TokenBucket, shared_bucket_name};
pub use retry::RetryConfig;
pub use state::{EcsOutcome, TaskView};

/// One entry of a capacity-provider strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityProvider {
    /// `FARGATE`, `FARGATE_SPOT` or a cluster's own provider.
    pub name: String,
    /// Relative share of tasks (default 1).
    #[serde(default = "one")]
    pub weight: i32,
    /// Tasks placed on this provider before weights apply (default 0).
    #[serde(default)]
    pub base: i32,
}

fn one() -> i32 {
    1
}

/// ECS runner configuration (the worker's `ecs` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EcsConfig {
    /// The cluster job tasks run in (default `jetrun-jobs`).
    pub cluster: String,
    /// AWS Region (default: the SDK's chain, e.g. `AWS_REGION`).
    pub region: Option<String>,
    /// Endpoint override, for moto or a VPC endpoint (default: none).
    pub endpoint_url: Option<String>,
    /// The deployment's name: the tasks' `group` and `jetrun:deployment` tag; `list` and
    /// the bridge consider only tasks of it (default `jetrun`).
    pub deployment: String,
    /// The job's container in the task definitions (default `job`).
    pub container: String,
    /// The task definition (family, `family:revision` or ARN) for jobs that match no
    /// `images` or `queues` entry (default: none; such jobs are `InvalidSpec`).
    pub task_definition: Option<String>,
    /// Task definition per queue (default: none).
    pub queues: BTreeMap<String, String>,
    /// Task definition per job image; wins over `queues` (default: none). The image itself
    /// is the task definition's: ECS cannot override it at launch.
    pub images: BTreeMap<String, String>,
    /// Launch type `FARGATE`, `EC2` or `EXTERNAL` (default: `FARGATE` unless
    /// `capacity_providers` is set; the two exclude each other).
    pub launch_type: Option<String>,
    /// Capacity-provider strategy, e.g. FARGATE_SPOT weight 3 + FARGATE base 1 (default:
    /// none).
    pub capacity_providers: Vec<CapacityProvider>,
    /// Fargate platform version (default: ECS's `LATEST`).
    pub platform_version: Option<String>,
    /// awsvpc subnets (default: none; Fargate needs at least one).
    pub subnets: Vec<String>,
    /// Security groups of job tasks (default: none: the VPC's default group).
    pub security_groups: Vec<String>,
    /// Security groups for jobs with `network: false`, e.g. one without egress rules
    /// (default: none: such jobs get `security_groups`, i.e. the same network).
    pub offline_security_groups: Vec<String>,
    /// Give tasks a public IP (default false; private subnets need NAT or endpoints).
    pub assign_public_ip: bool,
    /// Copy the job's labels onto the task as tags where ECS allows them (default true).
    pub label_tags: bool,
    /// How often `wait` polls `DescribeTasks` (default 5 s).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Timeout of one ECS call (default 10 s); a call that takes longer is retried.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Retries of ECS calls.
    pub retry: RetryConfig,
    /// The launch pace (default 100 burst, 20/s refill).
    pub pacer: PacerConfig,
    /// Where the tasks' logs are, for `jetrun jobs logs` and job results (default: the
    /// task definition's `awslogs` options).
    pub logs: LogsConfig,
}

impl Default for EcsConfig {
    fn default() -> Self {
        Self {
            cluster: "jetrun-jobs".into(),
            region: None,
            endpoint_url: None,
            deployment: "jetrun".into(),
            container: "job".into(),
            task_definition: None,
            queues: BTreeMap::new(),
            images: BTreeMap::new(),
            launch_type: None,
            capacity_providers: Vec::new(),
            platform_version: None,
            subnets: Vec::new(),
            security_groups: Vec::new(),
            offline_security_groups: Vec::new(),
            assign_public_ip: false,
            label_tags: true,
            poll_interval: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            retry: RetryConfig::default(),
            pacer: PacerConfig::default(),
            logs: LogsConfig::default(),
        }
    }
}

impl EcsConfig {
    /// Whether tasks run on Fargate (sizes are then checked before launch).
    pub fn fargate(&self) -> bool {
        if self.capacity_providers.is_empty() {
            self.launch_type.as_deref().unwrap_or("FARGATE") == "FARGATE"
        } else {
            self.capacity_providers
                .iter()
                .all(|p| p.name.starts_with("FARGATE"))
        }
    }

    /// The task definition for a job of `queue` running `image`.
    pub fn task_definition_for(&self, queue: &str, image: &str) -> Option<&str> {
        self.images
            .get(image)
            .or_else(|| self.queues.get(queue))
            .or(self.task_definition.as_ref())
            .map(String::as_str)
    }

    /// The configuration from JSON (e.g. the worker's `JETRUN_ECS_CONFIG`), checked: the
    /// same deserialisation as the worker configuration's `ecs` section
    /// ([`Self::deserialize_checked`]).
    pub fn from_json(json: &str) -> Result<Self, EcsError> {
        let mut de = serde_json::Deserializer::from_str(json);
        Self::deserialize_checked(&mut de)
            .and_then(|cfg| de.end().map(|()| cfg))
            .map_err(|e| EcsError {
                kind: EcsErrorKind::Config,
                message: format!("ECS runner configuration: {e}"),
                source: Some(Box::new(e)),
            })
    }

    /// Deserialises a configuration from any format and checks it ([`Self::validate`]):
    /// unknown fields and settings that cannot work are errors of the format, naming
    /// what is wrong (plain `Deserialize` checks only the shape). For
    /// `#[serde(deserialize_with = "EcsConfig::deserialize_checked")]`.
    pub fn deserialize_checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let cfg = Self::deserialize(d)?;
        cfg.validate().map_err(|e| serde::de::Error::custom(e.message))?;
        Ok(cfg)
    }

    /// Checks what can be checked without AWS.
    pub fn validate(&self) -> Result<(), EcsError> {
        let bad = |m: String| Err(EcsError::new(EcsErrorKind::Config, m));
        if self.cluster.is_empty() {
            return bad("cluster is empty".into());
        }
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token_ok(&self.deployment) {
            return bad(format!(
                "deployment {:?} must be 1-128 letters, digits, '-' or '_'",
                self.deployment
            ));
        }
        if self.container.is_empty() {
            return bad("container is empty".into());
        }
        if self.task_definition.is_none() && self.queues.is_empty() && self.images.is_empty() {
            return bad("no task definition: set task_definition, queues or images".into());
        }
        if self.launch_type.is_some() && !self.capacity_providers.is_empty() {
            return bad("launch_type and capacity_providers exclude each other".into());
        }
        if let Some(lt) = &self.launch_type
            && !matches!(lt.as_str(), "FARGATE" | "EC2" | "EXTERNAL")
        {
            return bad(format!("launch_type {lt:?} is not FARGATE, EC2 or EXTERNAL"));
        }
        if self.capacity_providers.iter().any(|p| p.weight < 0 || p.base < 0) {
            return bad("capacity provider weights and bases must be >= 0".into());
        }
        if self.poll_interval.is_zero() || self.call_timeout.is_zero() || self.retry.attempts == 0 {
            return bad("poll_interval, call_timeout and retry.attempts must be positive".into());
        }
        Ok(())
    }
}

/// Kinds of ECS runner set-up failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcsErrorKind {
    /// The configuration cannot work.
    Config,
    /// The shared launch pacer could not be opened.
    Pacer,
}

/// The ECS runner could not be built.
#[derive(Debug, thiserror::Error)]
#[error("ECS runner: {kind:?}: {message}")]
pub struct EcsError {
    /// What kind of failure.
    pub kind: EcsErrorKind,
    /// Details.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EcsError {
    fn new(kind: EcsErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }
}

/// What a failed call means.
enum CallError {
    /// Worth retrying (throttling, 5xx, capacity, network).
    Retry(String),
    /// Will not get better by retrying now.
    Fail(RunnerError),
}

/// Sorts an SDK error into retry or fail.
fn classify<E, R>(op: &str, e: SdkError<E, R>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            let text = format!("{op}: {code}: {msg}");
            let status = format!("{:?}", se.raw());
            match code {
                "ThrottlingException"
                | "Throttling"
                | "RequestLimitExceeded"
                | "TooManyRequestsException"
                | "ServerException"
                | "ServiceUnavailable"
                | "InternalFailure" => CallError::Retry(text),
                "ClientException"
                | "InvalidParameterException"
                | "PlatformTaskDefinitionIncompatibilityException"
                | "PlatformUnknownException"
                | "UnsupportedFeatureException" => {
                    CallError::Fail(RunnerError::new(RunnerErrorKind::InvalidSpec, text))
                }
                // Anything answered 5xx is the service's trouble: retry.
                _ if status.contains("StatusCode(5") || status.contains("status: 5") => {
                    CallError::Retry(text)
                }
                _ => CallError::Fail(RunnerError::new(RunnerErrorKind::Runtime, text)),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CallError::Retry(format!("{op}: {}", aws_sdk_ecs::error::DisplayErrorContext(&e)))
        }
        _ => CallError::Fail(RunnerError::new(
            RunnerErrorKind::Runtime,
            format!("{op}: {}", aws_sdk_ecs::error::DisplayErrorContext(&e)),
        )),
    }
}

/// A `failures[]` reason: retried, or the job cannot launch like this.
fn failure_is_retryable(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    reason.starts_with("RESOURCE:")
        || matches!(reason, "AGENT" | "MISSING" | "MEMORY" | "CPU")
        || r.contains("capacity")
        || r.contains("try again")
        || r.contains("limit")
        || r.contains("throttl")
}

/// `clientToken` takes at most 64 characters.
fn client_token(token: &str) -> String {
    if token.len() <= 64 {
        token.to_string()
    } else {
        use sha2::Digest;
        format!("h-{}", &hex::encode(sha2::Sha256::digest(token.as_bytes()))[..62])
    }
}

/// Whether ECS accepts this as a tag: up to 128/256 characters of letters, digits,
/// spaces and `_ . : / = + - @`, and no `aws:` prefix.
fn tag_ok(key: &str, value: &str) -> bool {
    let chars_ok = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
    };
    !key.is_empty()
        && key.len() <= 128
        && value.len() <= 256
        && !key.to_ascii_lowercase().starts_with("aws:")
        && chars_ok(key)
        && chars_ok(value)
}

/// Everything `RunTask` needs for one attempt, decided before any call.
#[derive(Debug, Clone)]
struct Plan {
    task_definition: String,
    overrides: TaskOverride,
    tags: Vec<Tag>,
    network: Option<NetworkConfiguration>,
    client_token: String,
}

/// The ECS runner.
pub struct EcsRunner {
    cfg: EcsConfig,
    client: Client,
    pacer: Arc<dyn Pacer>,
    logs: Option<aws_sdk_cloudwatchlogs::Client>,
    log_options: logs::LogOptionsCache,
    poller: Arc<poll::Poller>,
    node: Option<String>,
    launching: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for EcsRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsRunner")
            .field("cfg", &self.cfg)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EcsRunner {
    /// A runner whose client comes from the default AWS configuration chain (plus the
    /// config's region and endpoint), with the SDK's own retries off (this runner
    /// retries, with jitter, and looks for an existing task before every retry) and an
    /// in-process pacer. Use [`EcsRunner::from_config_shared`] for a deployment-wide pace.
    pub async fn from_config(cfg: EcsConfig) -> Result<Self, EcsError> {
        cfg.validate()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &cfg.endpoint_url {
            loader = loader.endpoint_url(e.clone());
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_ecs::config::Builder::from(&sdk)
            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_ecs::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(cfg.call_timeout)
                    .build(),
            )
            .build();
        let logs = aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
            .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(cfg.call_timeout)
                    .build(),
            )
            .build();
        Ok(Self::with_client(cfg, Client::from_conf(conf))?
            .with_logs(aws_sdk_cloudwatchlogs::Client::from_conf(logs)))
    }

    /// As [`EcsRunner::from_config`], pacing through the KV bucket
    /// `cfg.pacer.shared_bucket` (when set) shared by every worker of the deployment.
    pub async fn from_config_shared(
        cfg: EcsConfig,
        js: &async_nats::jetstream::Context,
    ) -> Result<Self, EcsError> {
        let shared = cfg.pacer.shared_bucket.clone();
        let runner = Self::from_config(cfg).await?;
        match shared {
            None => Ok(runner),
            Some(bucket) => {
                let key = format!("ecs-launch.{}", runner.cfg.deployment);
                let p = KvTokenBucket::open(js, &bucket, key, &runner.cfg.pacer)
                    .await
                    .map_err(|e| EcsError {
                        kind: EcsErrorKind::Pacer,
                        message: e.to_string(),
                        source: Some(Box::new(e)),
                    })?;
                Ok(runner.with_pacer(Arc::new(p)))
            }
        }
    }

    /// A runner with a given client (tests, custom credentials) and an in-process pacer,
    /// without logs until [`EcsRunner::with_logs`]. The client should have the SDK's
    /// retries disabled.
    pub fn with_client(cfg: EcsConfig, client: Client) -> Result<Self, EcsError> {
        cfg.validate()?;
        let pacer = TokenBucket::new(&cfg.pacer).map_err(|e| EcsError {
            kind: EcsErrorKind::Config,
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        if !cfg.subnets.is_empty() && cfg.offline_security_groups.is_empty() {
            warn!(
                "ECS runner: no offline_security_groups: jobs without `network` get the same network as the others"
            );
        }
        let poller = Arc::new(poll::Poller::new(client.clone(), cfg.clone()));
        Ok(Self {
            cfg,
            client,
            pacer: Arc::new(pacer),
            logs: None,
            log_options: logs::LogOptionsCache::default(),
            poller,
            node: None,
            launching: std::sync::Mutex::default(),
        })
    }

    /// Reads task logs and results through this CloudWatch Logs client (retries
    /// disabled, like the ECS client's).
    pub fn with_logs(mut self, client: aws_sdk_cloudwatchlogs::Client) -> Self {
        self.logs = Some(client);
        self
    }

    /// Paces launches with `pacer` (e.g. a [`KvTokenBucket`] shared by the deployment).
    pub fn with_pacer(mut self, pacer: Arc<dyn Pacer>) -> Self {
        self.pacer = pacer;
        self
    }

    /// Tags tasks with this node (`jetrun:node`) and lists only this node's tasks, so an
    /// agent adopts or reaps its own tasks and never another worker's. Set it to the
    /// worker's node id.
    pub fn with_node(mut self, node_id: impl Into<String>) -> Self {
        self.node = Some(node_id.into());
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EcsConfig {
        &self.cfg
    }

    /// The ECS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn invalid(msg: impl Into<String>) -> RunnerError {
        RunnerError::new(RunnerErrorKind::InvalidSpec, msg)
    }

    /// Decides the `RunTask` call for `req`, or why the job cannot run here.
    fn plan(&self, req: &LaunchRequest) -> Result<Plan, RunnerError> {
        let spec = &req.spec;
        let task_definition = self
            .cfg
            .task_definition_for(&spec.queue, &spec.image)
            .ok_or_else(|| {
                Self::invalid(format!(
                    "no ECS task definition for queue {:?} or image {:?} (worker config ecs.queues / ecs.images / ecs.task_definition)",
                    spec.queue, spec.image
                ))
            })?
            .to_string();
        if !spec.ports.is_empty() {
            return Err(Self::invalid(
                "the ECS runner does not publish task ports (spec.ports); use a service or a load balancer",
            ));
        }
        let size = if self.cfg.fargate() {
            fargate::size_for(&spec.resources).map_err(Self::invalid)?
        } else {
            None
        };
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("JETRUN_JOB_ID".into(), req.job_id.clone());
        env.insert("JETRUN_ATTEMPT".into(), req.attempt.to_string());
        if let Some(tp) = &req.traceparent {
            env.insert("TRACEPARENT".into(), tp.clone());
        }
        let mut container = ContainerOverride::builder().name(&self.cfg.container);
        for arg in &spec.command {
            container = container.command(arg);
        }
        for (k, v) in &env {
            container = container.environment(KeyValuePair::builder().name(k).value(v).build());
        }
        let mut overrides = TaskOverride::builder().container_overrides(container.build());
        if let Some(s) = size {
            overrides = overrides.cpu(s.cpu.to_string()).memory(s.memory.to_string());
        }
        let mut tags = vec![
            (state::TAG_JOB_ID.to_string(), req.job_id.clone()),
            (state::TAG_QUEUE.to_string(), spec.queue.clone()),
            (state::TAG_ATTEMPT.to_string(), req.attempt.to_string()),
            (state::TAG_DEPLOYMENT.to_string(), self.cfg.deployment.clone()),
        ];
        if let Some(n) = &self.node {
            tags.push((TAG_NODE.to_string(), n.clone()));
        }
        if self.cfg.label_tags {
            for (k, v) in &spec.labels {
                // ECS allows 50 tags; ours come first.
                if tags.len() >= 50 {
                    break;
                }
                if tag_ok(k, v) && !k.starts_with("jetrun:") {
                    tags.push((k.clone(), v.clone()));
                } else {
                    debug!(job_id = %req.job_id, label = %k, "label not copied to an ECS tag (not a valid tag)");
                }
            }
        }
        let tags = tags
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let network = if self.cfg.subnets.is_empty() {
            None
        } else {
            let groups = if !spec.network && !self.cfg.offline_security_groups.is_empty() {
                &self.cfg.offline_security_groups
            } else {
                &self.cfg.security_groups
            };
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(self.cfg.subnets.clone()))
                .set_security_groups((!groups.is_empty()).then(|| groups.clone()))
                .assign_public_ip(if self.cfg.assign_public_ip {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                })
                .build()
                .map_err(|e| {
                    RunnerError::new(RunnerErrorKind::Runtime, format!("awsvpc configuration: {e}"))
                })?;
            Some(NetworkConfiguration::builder().awsvpc_configuration(vpc).build())
        };
        Ok(Plan {
            task_definition,
            overrides: overrides.build(),
            tags,
            network,
            client_token: client_token(&req.token),
        })
    }

    /// Runs `f` until it succeeds, fails for good or the retries are used up.
    async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T, RunnerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        call_with(&self.cfg.retry, op, f).await
    }

    /// Describes up to 100 tasks per call, with tags.
    async fn describe_many(&self, arns: &[String]) -> Result<Vec<TaskView>, RunnerError> {
        describe_with(&self.client, &self.cfg, arns).await
    }

    /// Task ARNs of the cluster, optionally started by `started_by`, both running and
    /// recently stopped (ECS lists only running ones unless asked).
    async fn list_arns(&self, started_by: Option<&str>) -> Result<Vec<String>, RunnerError> {
        let mut arns = Vec::new();
        for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
            let mut next: Option<String> = None;
            loop {
                let page = self
                    .call("ListTasks", || async {
                        self.client
                            .list_tasks()
                            .cluster(&self.cfg.cluster)
                            .set_started_by(started_by.map(str::to_string))
                            .desired_status(desired.clone())
                            .set_next_token(next.clone())
                            .send()
                            .await
                            .map_err(|e| classify("ListTasks", e))
                    })
                    .await?;
                for a in page.task_arns() {
                    if !arns.contains(a) {
                        arns.push(a.clone());
                    }
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(arns)
    }

    /// The task already started for this attempt, if any (running ones first).
    pub async fn find_attempt(&self, job_id: &str, attempt: u32) -> Result<Option<String>, RunnerError> {
        let arns = self.list_arns(Some(job_id)).await?;
        if arns.is_empty() {
            return Ok(None);
        }
        let mut found: Vec<TaskView> = self
            .describe_many(&arns)
            .await?
            .into_iter()
            .filter(|t| t.identity(&self.cfg.deployment) == Some((job_id.to_string(), attempt)))
            .collect();
        found.sort_by_key(|t| t.last_status == "STOPPED");
        Ok(found.into_iter().next().map(|t| t.task_arn))
    }

    /// One `RunTask` call.
    async fn run_task(&self, req: &LaunchRequest, plan: &Plan) -> Result<String, CallError> {
        let mut call = self
            .client
            .run_task()
            .cluster(&self.cfg.cluster)
            .task_definition(&plan.task_definition)
            .count(1)
            .started_by(&req.job_id)
            .group(&self.cfg.deployment)
            .client_token(&plan.client_token)
            .overrides(plan.overrides.clone())
            .set_tags(Some(plan.tags.clone()))
            .set_network_configuration(plan.network.clone())
            .set_platform_version(self.cfg.platform_version.clone());
        if self.cfg.capacity_providers.is_empty() {
            let lt = LaunchType::from(self.cfg.launch_type.as_deref().unwrap_or("FARGATE"));
            call = call.launch_type(lt);
        } else {
            for p in &self.cfg.capacity_providers {
                let item = CapacityProviderStrategyItem::builder()
                    .capacity_provider(&p.name)
                    .weight(p.weight)
                    .base(p.base)
                    .build()
                    .map_err(|e| {
                        CallError::Fail(RunnerError::new(
                            RunnerErrorKind::Runtime,
                            format!("strategy: {e}"),
                        ))
                    })?;
                call = call.capacity_provider_strategy(item);
            }
        }
        let out = call.send().await.map_err(|e| classify("RunTask", e))?;
        if let Some(arn) = out.tasks().iter().find_map(|t| t.task_arn()) {
            return Ok(arn.to_string());
        }
        let reasons: Vec<String> = out
            .failures()
            .iter()
            .map(|f| match f.detail() {
                Some(d) => format!("{} ({d})", f.reason().unwrap_or("unknown")),
                None => f.reason().unwrap_or("unknown").to_string(),
            })
            .collect();
        if reasons.is_empty() {
            return Err(CallError::Retry(
                "RunTask: no task and no failures in the answer".into(),
            ));
        }
        let all_retryable = out
            .failures()
            .iter()
            .all(|f| failure_is_retryable(f.reason().unwrap_or("")));
        let text = format!("RunTask failures: {}", reasons.join("; "));
        if all_retryable {
            Err(CallError::Retry(text))
        } else {
            Err(CallError::Fail(Self::invalid(text)))
        }
    }

    fn token_lock(&self, token: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.launching.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(token.to_string()).or_default().clone()
    }

    async fn launch_locked(&self, req: &LaunchRequest, plan: &Plan) -> Result<String, RunnerError> {
        let mut last = String::new();
        for n in 0..self.cfg.retry.attempts {
            if n > 0 {
                let d = self.cfg.retry.backoff(n - 1);
                warn!(job_id = %req.job_id, attempt = req.attempt, error = %last, retry_in = ?d, "RunTask failed; retrying");
                tokio::time::sleep(d).await;
            }
            // Also before a retry: a RunTask whose answer was lost may have started it.
            if let Some(arn) = self.find_attempt(&req.job_id, req.attempt).await? {
                info!(job_id = %req.job_id, attempt = req.attempt, task_arn = %arn, "adopted the attempt's existing ECS task");
                return Ok(arn);
            }
            self.pacer
                .acquire()
                .await
                .map_err(|e| RunnerError::new(RunnerErrorKind::Runtime, e.to_string()))?;
            match self.run_task(req, plan).await {
                Ok(arn) => {
                    info!(job_id = %req.job_id, attempt = req.attempt, task_arn = %arn, task_definition = %plan.task_definition, "ECS task started");
                    return Ok(arn);
                }
                Err(CallError::Fail(e)) => return Err(e),
                Err(CallError::Retry(msg)) => last = msg,
            }
        }
        Err(RunnerError::new(
            RunnerErrorKind::Exhausted,
            format!("RunTask: gave up after {} tries: {last}", self.cfg.retry.attempts),
        ))
    }

    /// `StopTask` with a reason (prefixed `jetrun: `, so the bridge leaves reporting it
    /// to the stopper).
    pub async fn stop_with_reason(&self, task_ref: &str, reason: &str) -> Result<(), RunnerError> {
        let reason = format!("{} {reason}", state::STOP_REASON_PREFIX);
        // ECS takes up to 1024 characters.
        let reason: String = reason.chars().take(1024).collect();
        self.call("StopTask", || async {
            self.client
                .stop_task()
                .cluster(&self.cfg.cluster)
                .task(task_ref)
                .reason(&reason)
                .send()
                .await
                .map_err(|e| classify("StopTask", e))
        })
        .await?;
        info!(task_arn = %task_ref, reason = %reason, "ECS task stop requested");
        Ok(())
    }

    /// The task's full state, or `None` if ECS does not know it.
    pub async fn describe_task(&self, task_ref: &str) -> Result<Option<TaskView>, RunnerError> {
        Ok(self
            .describe_many(&[task_ref.to_string()])
            .await?
            .into_iter()
            .next())
    }

    /// Every task of this deployment (and node, when set), running or recently stopped.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, RunnerError> {
        let arns = self.list_arns(None).await?;
        Ok(self
            .describe_many(&arns)
            .await?
            .into_iter()
            .filter(|t| t.identity(&self.cfg.deployment).is_some())
            .filter(|t| match &self.node {
                Some(n) => t.tags.get(TAG_NODE) == Some(n),
                None => true,
            })
            .collect())
    }
}

/// Runs `f` until it succeeds, fails for good or the retries are used up.
async fn call_with<T, F, Fut>(retry: &RetryConfig, op: &str, mut f: F) -> Result<T, RunnerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(CallError::Fail(e)) => return Err(e),
            Err(CallError::Retry(msg)) => {
                n += 1;
                if n >= retry.attempts {
                    return Err(RunnerError::new(
                        RunnerErrorKind::Runtime,
                        format!("{op}: gave up after {n} tries: {msg}"),
                    ));
                }
                let d = retry.backoff(n - 1);
                warn!(op, error = %msg, retry_in = ?d, "ECS call failed; retrying");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// `DescribeTasks` of `arns`, up to 100 per call (ECS's limit), with tags.
async fn describe_with(
    client: &Client,
    cfg: &EcsConfig,
    arns: &[String],
) -> Result<Vec<TaskView>, RunnerError> {
    let mut out = Vec::new();
    for chunk in arns.chunks(100) {
        let tasks = call_with(&cfg.retry, "DescribeTasks", || async {
            client
                .describe_tasks()
                .cluster(&cfg.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(TaskField::Tags)
                .send()
                .await
                .map_err(|e| classify("DescribeTasks", e))
        })
        .await?;
        out.extend(tasks.tasks().iter().map(|t| state::from_sdk(t, &cfg.container)));
    }
    Ok(out)
}

/// Tag: the node (worker) that launched the task, when the runner has one.
pub const TAG_NODE: &str = "jetrun:node";

#[async_trait::async_trait]
impl Runner for EcsRunner {
    fn name(&self) -> &'static str {
        "ecs"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<String, RunnerError> {
        let plan = self.plan(req)?;
        let lock = self.token_lock(&req.token);
        let result = {
            let _held = lock.lock().await;
            self.launch_locked(req, &plan).await
        };
        self.launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.token);
        result
    }

    async fn wait(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        loop {
            // One shared poller: every waiting task of this runner in one DescribeTasks
            // (100 per call) per `poll_interval`, not one call per task.
            match self.poller.next(task_ref).await {
                Ok(Some(t)) => match t.outcome(&self.cfg.container) {
                    EcsOutcome::Pending | EcsOutcome::Running => {}
                    EcsOutcome::Lost { reason } => {
                        return Err(RunnerError::new(
                            RunnerErrorKind::Runtime,
                            format!("ECS task lost: {reason}"),
                        ));
                    }
                    other => return Ok(other.task_status()),
                },
                Ok(None) => return Ok(TaskStatus::NotFound),
                // Keep waiting: the caller's timeout bounds this, and a stopped task stays
                // describable for an hour.
                Err(e) => warn!(task_arn = %task_ref, error = %e, "DescribeTasks failed while waiting"),
            }
        }
    }

    async fn describe(&self, task_ref: &str) -> Result<TaskStatus, RunnerError> {
        Ok(match self.describe_task(task_ref).await? {
            Some(t) => t.outcome(&self.cfg.container).task_status(),
            None => TaskStatus::NotFound,
        })
    }

    async fn stop(&self, task_ref: &str, _grace: Duration) -> Result<(), RunnerError> {
        if let Some(t) = self.describe_task(task_ref).await?
            && t.last_status == "STOPPED"
        {
            return Ok(());
        }
        self.stop_with_reason(task_ref, "stop requested (cancel, timeout or shutdown)")
            .await
    }

    async fn list(&self) -> Result<Vec<TaskInfo>, RunnerError> {
        Ok(self
            .tasks()
            .await?
            .into_iter()
            .filter_map(|t| {
                let (job_id, attempt) = t.identity(&self.cfg.deployment)?;
                Some(TaskInfo {
                    status: t.outcome(&self.cfg.container).task_status(),
                    task_ref: t.task_arn,
                    job_id,
                    attempt,
                })
            })
            .collect())
    }

    async fn remove(&self, _task_ref: &str) -> Result<(), RunnerError> {
        // Nothing held locally; ECS forgets stopped tasks by itself.
        Ok(())
    }

    fn log_paths(&self, _task_ref: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        // Logs are the task definition's (awslogs → CloudWatch): see `log_tail`.
        None
    }

    async fn log_tail(
        &self,
        task_ref: &str,
        lines: usize,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, RunnerError> {
        if self.logs.is_none() {
            return Ok(None);
        }
        let Some(s) = self.log_stream(task_ref).await? else {
            return Ok(None);
        };
        // One event is usually one line; `tail_lines` splits the rest.
        let events = self.last_log_events(&s, lines).await?;
        // awslogs merges stdout and stderr into one stream.
        Ok(Some((logs::tail_lines(&events, lines), Vec::new())))
    }

    async fn result(&self, task_ref: &str) -> Result<Option<Vec<u8>>, RunnerError> {
        if self.logs.is_none() {
            return Ok(None);
        }
        let Some(s) = self.log_stream(task_ref).await? else {
            return Ok(None);
        };
        let events = self
            .last_log_events(&s, logs::RESULT_SCAN_EVENTS as usize)
            .await?;
        Ok(logs::result_of(&events))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn failure_reasons_are_classified() {
        for r in [
            "RESOURCE:CPU",
            "RESOURCE:MEMORY",
            "RESOURCE:ENI",
            "AGENT",
            "Capacity is unavailable at this time. Please try again later or in a different availability zone",
            "You've reached the limit on the number of tasks you can run concurrently",
        ] {
            assert!(failure_is_retryable(r), "{r}");
        }
        for r in ["ATTRIBUTE", "INACTIVE", "Invalid container override"] {
            assert!(!failure_is_retryable(r), "{r}");
        }
    }

    #[test]
    fn long_tokens_are_hashed_to_64_characters() {
        assert_eq!(client_token("j-1"), "j-1");
        let long = format!("{}-1", "a".repeat(100));
        let t = client_token(&long);
        assert_eq!(t.len(), 64);
        assert_eq!(t, client_token(&long));
        assert_ne!(t, client_token(&format!("{}-2", "a".repeat(100))));
    }

    #[test]
    fn tags_follow_ecs_rules() {
        assert!(tag_ok("jetrun.rule", "bisect"));
        assert!(tag_ok("github.delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!tag_ok("aws:x", "y"));
        assert!(!tag_ok("a", &"v".repeat(257)));
        assert!(!tag_ok("a{b}", "c"));
        assert!(!tag_ok("", "c"));
    }

    #[test]
    fn config_checks_and_task_definition_choice() {
        let mut c = EcsConfig {
            task_definition: Some("job".into()),
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(c.fargate());
        c.queues.insert("gpu".into(), "gpu-job".into());
        c.images.insert("tools".into(), "tools-job".into());
        assert_eq!(c.task_definition_for("gpu", "busybox"), Some("gpu-job"));
        assert_eq!(c.task_definition_for("gpu", "tools"), Some("tools-job"));
        assert_eq!(c.task_definition_for("default", "x"), Some("job"));
        c.capacity_providers = vec![CapacityProvider {
            name: "FARGATE_SPOT".into(),
            weight: 3,
            base: 0,
        }];
        assert!(c.fargate());
        c.launch_type = Some("FARGATE".into());
        assert_eq!(c.validate().unwrap_err().kind, EcsErrorKind::Config);
        c.launch_type = None;
        c.capacity_providers[0].name = "my-asg".into();
        assert!(!c.fargate());
        let bad = EcsConfig::default();
        assert!(bad.validate().is_err(), "no task definition");
        assert!(EcsConfig::from_json(r#"{"task_definition": "job"}"#).is_ok());
        assert_eq!(
            EcsConfig::from_json(r#"{"task_definition": "job", "deployment": "a.b"}"#)
                .unwrap_err()
                .kind,
            EcsErrorKind::Config
        );
        let parsed: EcsConfig = serde_json::from_value(serde_json::json!({
            "cluster": "jobs", "task_definition": "job",
            "capacity_providers": [{"name": "FARGATE_SPOT", "weight": 3}, {"name": "FARGATE", "base": 1}],
            "poll_interval": "2s", "pacer": {"capacity": 50}
        }))
        .unwrap();
        assert_eq!(parsed.capacity_providers[1].weight, 1);
        assert_eq!(parsed.pacer.refill_per_second, 20.0);
        assert_eq!(parsed.poll_interval, Duration::from_secs(2));
        assert!(serde_json::from_value::<EcsConfig>(serde_json::json!({"clustr": "x"})).is_err());
    }
}
