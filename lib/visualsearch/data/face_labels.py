"""The face label vocabularies that the faces world writes and the face readers check: FairFace's gender,
race and age-bin names, and the age bin of an age in years.

Why a module of its own: the world (`faces`) writes the FER2013 file through the readers' writer
(`face_readers.write_fer2013`) and the readers check labels against these names; with the names here,
neither of the two modules imports the other's importer (no import circle).
"""
from __future__ import annotations

GENDERS = ("Male", "Female")
RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
AGE_BINS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
AGE_BIN_EDGES = (0, 3, 10, 20, 30, 40, 50, 60, 70, 86)  # [lo, hi) years of each bin; the last bin drawn up to 85


def age_bin(age_years: float) -> int:
    """Index into AGE_BINS of an age in years (FairFace's bins; 70 and over is the last)."""
    for i in range(len(AGE_BINS) - 1):
        if age_years < AGE_BIN_EDGES[i + 1]:
            return i
    return len(AGE_BINS) - 1
