"""The AWS side of the ports: DynamoDB Store, the transcript bus (the SQS FIFO delivery queue,
and EventBridge for fan-out), Secrets Manager secrets, and which ECS tasks are alive (the S3
BlobStore is ``callscribe.blobs.s3``). Each passes the same contract suite as its local
adapter."""
