//! The AWS SDK's shared configuration for the SQS transport and the Fargate spawner: the
//! SDK's default credential chain and region resolution, an optional endpoint override, and
//! an HTTPS client on rustls with ring (no aws-lc build). Errors are sorted into what may pass
//! (throttling, 5xx, connection trouble: [`Error::Unavailable`]) and what will not
//! ([`Error::Refused`]).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_smithy_http_client::tls;

use crate::{config::AwsConfig, error::Error};

/// Loads the SDK configuration `aws` describes (the standard `AWS_*` environment fills in
/// what it leaves unset).
pub async fn sdk_config(aws: &AwsConfig) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Sorts an SDK error: throttling, server errors and transport failures may pass; any other
/// service error (a missing queue or cluster, a bad parameter, access denied) will not.
pub fn classify<E, R>(what: &str, err: aws_sdk_sqs::error::SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::SdkError;
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("unknown");
            let message = format!("{what}: {code}: {}", e.message().unwrap_or("(no message)"));
            let transient = code.contains("Throttl")
                || code.contains("RequestLimitExceeded")
                || code == "ServiceUnavailable"
                || code == "InternalFailure"
                || code == "InternalError"
                || code == "ServerException";
            if transient {
                Error::Unavailable(message)
            } else {
                Error::Refused(message)
            }
        }
        _ => Error::Unavailable(format!(
            "{what}: {}",
            aws_sdk_sqs::error::DisplayErrorContext(&err)
        )),
    }
}
