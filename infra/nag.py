"""Acknowledging cdk-nag findings (cdk-nag 3 reads CDK's `Validations` acknowledgments).

A finding that names what it is about (IAM5's `Resource::*`, IAM4's `Policy::…`) is acknowledged
for exactly that, so that a new wildcard elsewhere in the same policy still fails synthesis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str, *, findings: Sequence[str] = ()) -> None:
    ids = [f"{rule}[{finding}]" for finding in findings] if findings else [rule]
    Validations.of(scope).acknowledge(*(Acknowledgment(id=id, reason=reason) for id in ids))


def finding_text(scope: IConstruct, value: str) -> str:
    """`value` (a string holding tokens, such as an ARN built from references) as cdk-nag writes
    it in a finding: a reference as `<LogicalId>`, an attribute as `<LogicalId.Attr>`, a pseudo
    parameter as `<AWS::Region>`; a literal as it is."""

    def flat(node: Any) -> str:
        if isinstance(node, str):
            return node.replace("${", "<").replace("}", ">")
        if isinstance(node, dict) and len(node) == 1:
            ((function, argument),) = node.items()
            if function == "Fn::Join":
                delimiter, items = argument
                return delimiter.join(flat(item) for item in items)
            if function == "Fn::GetAtt":
                resource, attribute = argument
                return f"<{flat(resource)}.{flat(attribute)}>"
            if function == "Ref":
                return f"<{flat(argument)}>"
        return json.dumps(node)

    return flat(Stack.of(scope).resolve(value))


def acknowledge_table_index_grant(scope: IConstruct, table: dynamodb.ITable) -> None:
    """CDK's DynamoDB grants cover the table's indexes as `<table ARN>/index/*`."""
    logical_id = Stack.of(table).get_logical_id(table.node.default_child)
    acknowledge(
        scope,
        "AwsSolutions-IAM5",
        "CDK's DynamoDB grant covers the table's own indexes (<table>/index/*): the one GSI, "
        "gsi1, that the Store queries; nothing outside this table.",
        findings=[f"Resource::<{logical_id}.Arn>/index/*"],
    )


def acknowledge_ecr_authorization(task_definition: IConstruct) -> None:
    acknowledge(
        task_definition,
        "AwsSolutions-IAM5",
        "The execution role's ecr:GetAuthorizationToken (CDK-generated) has no resource-level "
        "permissions; image pulls themselves are scoped to this image's repository.",
        findings=["Resource::*"],
    )


# The wildcard actions CDK's S3 grants (grant_read, grant_put) expand to.
_S3_GRANT_ACTIONS = ("s3:GetObject*", "s3:GetBucket*", "s3:List*", "s3:Abort*")


def acknowledge_bucket_grant(
    scope: IConstruct, bucket: s3.IBucket, key_patterns: Sequence[str]
) -> None:
    """CDK's S3 grants name action families (`s3:GetObject*`…) and objects by key pattern."""
    logical_id = Stack.of(bucket).get_logical_id(bucket.node.default_child)
    acknowledge(
        scope,
        "AwsSolutions-IAM5",
        "CDK's S3 grant: object reads/writes limited to this bucket's "
        f"{', '.join(key_patterns)} keys, through CDK's action families for them.",
        findings=[f"Action::{action}" for action in _S3_GRANT_ACTIONS]
        + [f"Resource::<{logical_id}.Arn>/{pattern}" for pattern in key_patterns],
    )
