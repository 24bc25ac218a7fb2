"""The daily utterances export: a Lambda (the repository's image, functions/exporter.handler)
that reads the previous UTC day's messages from the table and writes 24 gzip JSON Lines files
per tenant under `exports/` in the bucket. The stack schedules it (02:00 UTC) through
`CallScribeStack.add_daily_export`."""

from __future__ import annotations

from aws_cdk import Duration
from constructs import Construct

from infra.config import DeploymentConfig
from infra.data import EXPORTS_PREFIX, DataConstruct
from infra.functions import callscribe_function
from infra.images import EXPORTER_HANDLER
from infra.nag import acknowledge_bucket_grant, acknowledge_table_index_grant


class ExportsConstruct(Construct):
    def __init__(
        self, scope: Construct, id: str, *, config: DeploymentConfig, data: DataConstruct
    ) -> None:
        super().__init__(scope, id)
        self.function = callscribe_function(
            self,
            "ExporterFunction",
            config=config,
            handler=EXPORTER_HANDLER,
            service_name="callscribe-exporter",
            memory_mib=1024,
            # A busy day is millions of rows read page by page; Lambda's maximum leaves room,
            # and the scheduler's retries re-run a day that still timed out (idempotent).
            timeout=Duration.minutes(15),
            # Outside the VPC: it needs only DynamoDB and S3, both public AWS endpoints.
            environment={
                "CALLSCRIBE_TABLE_NAME": data.table.table_name,
                "CALLSCRIBE_BLOB_S3_BUCKET": data.exports_bucket.bucket_name,
            },
        )
        data.table.grant_read_data(self.function)
        acknowledge_table_index_grant(self.function.role, data.table)
        # Writes feed files and run markers under exports/; reads them back (HEAD after each
        # upload, for the size it reports).
        pattern = f"{EXPORTS_PREFIX}*"
        data.exports_bucket.grant_put(self.function, pattern)
        data.exports_bucket.grant_read(self.function, pattern)
        acknowledge_bucket_grant(self.function.role, data.exports_bucket, [pattern])
