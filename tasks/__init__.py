"""limelight's work: plain, typed functions with no Prefect import (see flows/ for the wiring)."""
