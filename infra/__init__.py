"""CallScribe's AWS deployment (AWS CDK): see stack.py for the composition."""
