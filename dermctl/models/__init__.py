"""Backbones (created through timm), feature rules and the exported-backbone format."""
