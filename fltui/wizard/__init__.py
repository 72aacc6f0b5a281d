"""The provisioning wizard: flprovision's engine behind a step-by-step screen."""
