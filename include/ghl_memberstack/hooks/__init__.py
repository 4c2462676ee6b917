"""Airflow hooks for the GoHighLevel API v2 and the Memberstack Admin API.

The hook modules are imported on demand, so ``import ghl_memberstack.hooks`` stays cheap.
"""
