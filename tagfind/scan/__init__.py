"""Scanners: one PE file in, the sites where tags reach pool APIs out (one finder per arch)."""

from .model import ScanResult, Site, evidence_for

__all__ = ["ScanResult", "Site", "evidence_for"]
