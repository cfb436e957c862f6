"""The front end: one call from AnnData or counts to the tidy DE table."""
