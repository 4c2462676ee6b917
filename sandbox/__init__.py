"""Local emulators of the GoHighLevel API v2 and the Memberstack Admin API.

`python -m sandbox` serves both (on 127.0.0.1 unless SANDBOX_HOST says otherwise), and
`sandbox.testing.running_sandbox` runs them inside tests. The pipeline package `ghl_memberstack`
must not import this package.
"""
