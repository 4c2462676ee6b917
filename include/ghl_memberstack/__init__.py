"""Sync GoHighLevel sub-accounts into Memberstack apps with Airflow 3."""

__version__ = "0.1.0"
