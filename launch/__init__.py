"""Runnable composition: settings, app factory, CLI, database, the dev sandbox EHR. Nothing imports launch."""
