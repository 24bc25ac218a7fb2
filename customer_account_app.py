"""CDK app of the stack a CallScribe tenant deploys in its Amazon Connect account:
`cdk deploy --app "python3 customer_account_app.py" -c callscribeReaderRoleArn=… -c externalId=…
-c connectStreamPrefix=…` (README "Amazon Connect"). The settings are validated by
infra/customer_account.py (through infra/config.py's validate_context, as app.py's are);
cdk-nag's AWS Solutions rules run at synthesis."""

import os
import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import ConfigError
from infra.customer_account import ConnectMediaAccessStack, load_customer_config


def main() -> None:
    app = cdk.App()
    try:
        config = load_customer_config(app.node.get_all_context())
    except ConfigError as exc:
        sys.exit(str(exc))
    ConnectMediaAccessStack(
        app,
        config.stack_name,
        config=config,
        env=cdk.Environment(
            account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
            region=os.environ.get("CDK_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
        ),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    app.synth()


if __name__ == "__main__":
    main()
