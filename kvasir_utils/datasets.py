"""What the study knows about its datasets, written once: their classes (Kvasir v2's in the order of
the paper's tables, HyperKvasir's as its folders lie), how a table shows a class, where in the GI
tract each class is seen, and each dataset's citation and terms of use, keyed by ``data.dataset``.

Pure data and small look-ups that import nothing of the study's, so every part of the package may
read them. How one dataset's classes count as another's is the one fact kept elsewhere: in a file
beside the profiles that users read and edit, ``configs/mappings/<target>-to-<source>.yaml``
(cross-evaluate scores with it; the HyperKvasir-shaped generator gives each class the cue of the
Kvasir v2 class it counts as).
"""

from __future__ import annotations

from typing import NamedTuple

UPPER_GI, LOWER_GI = "upper GI", "lower GI"


class KvasirClass(NamedTuple):
    """One of Kvasir v2's classes: its folder, the paper's abbreviation, where in the GI tract it is seen."""

    name: str
    abbreviation: str
    region: str


# Kvasir v2 (Pogorelov et al. 2017) in the order of the paper's tables (its Table 1 and Table 2 are
# given for these), with the abbreviations of its Table 2. The Z-line, oesophagitis and the pylorus
# are seen through a gastroscope (upper GI), the rest through a colonoscope (lower GI).
KVASIR_V2 = [
    KvasirClass("dyed-lifted-polyps", "DLP", LOWER_GI),
    KvasirClass("dyed-resection-margins", "DRM", LOWER_GI),
    KvasirClass("esophagitis", "ESO", UPPER_GI),
    KvasirClass("normal-cecum", "NC", LOWER_GI),
    KvasirClass("normal-pylorus", "NP", UPPER_GI),
    KvasirClass("normal-z-line", "NZL", UPPER_GI),
    KvasirClass("polyps", "POL", LOWER_GI),
    KvasirClass("ulcerative-colitis", "UC", LOWER_GI),
]
KVASIR_V2_CLASSES = [c.name for c in KVASIR_V2]
KVASIR_V2_ABBREVIATIONS = {c.name: c.abbreviation for c in KVASIR_V2}


class HyperKvasirClass(NamedTuple):
    """One of HyperKvasir's labelled classes, as ``labeled-images/<tract>/<kind>/<folder>/`` holds it."""

    tract: str  # lower-gi-tract or upper-gi-tract: the region
    kind: str  # anatomical-landmarks, pathological-findings, quality-of-mucosal-views, therapeutic-interventions
    folder: str  # the class
    images: int  # how many HyperKvasir has
    file_class: str  # its name in HyperKvasir's official split files, which differs for some


# HyperKvasir's labelled images (Borgli et al. 2020): its 23 classes in path order (what
# data.classes: [] finds).
HYPER_KVASIR = [
    HyperKvasirClass("lower-gi-tract", "anatomical-landmarks", "cecum", 1009, "normal-cecum"),
    HyperKvasirClass("lower-gi-tract", "anatomical-landmarks", "ileum", 9, "ileum"),
    HyperKvasirClass("lower-gi-tract", "anatomical-landmarks", "retroflex-rectum", 391, "retroflex-rectum"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "hemorrhoids", 6, "hemorroids"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "polyps", 1028, "polyp"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-0-1", 35,
                     "ulcerative-colitis-grade-0-1"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-1", 201,
                     "ulcerative-colitis-grade-1"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-1-2", 11,
                     "ulcerative-colitis-grade-1-2"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-2", 443,
                     "ulcerative-colitis-grade-2"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-2-3", 28,
                     "ulcerative-colitis-grade-2-3"),
    HyperKvasirClass("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-3", 133,
                     "ulcerative-colitis-grade-3"),
    HyperKvasirClass("lower-gi-tract", "quality-of-mucosal-views", "bbps-0-1", 646, "bbps-0-1"),
    HyperKvasirClass("lower-gi-tract", "quality-of-mucosal-views", "bbps-2-3", 1148, "bbps-2-3"),
    HyperKvasirClass("lower-gi-tract", "quality-of-mucosal-views", "impacted-stool", 131, "impacted-stool"),
    HyperKvasirClass("lower-gi-tract", "therapeutic-interventions", "dyed-lifted-polyps", 1002, "dyed-lifted-polyps"),
    HyperKvasirClass("lower-gi-tract", "therapeutic-interventions", "dyed-resection-margins", 989,
                     "dyed-resection-margins"),
    HyperKvasirClass("upper-gi-tract", "anatomical-landmarks", "pylorus", 999, "normal-pylorus"),
    HyperKvasirClass("upper-gi-tract", "anatomical-landmarks", "retroflex-stomach", 764, "retroflex-stomach"),
    HyperKvasirClass("upper-gi-tract", "anatomical-landmarks", "z-line", 932, "normal-z-line"),
    HyperKvasirClass("upper-gi-tract", "pathological-findings", "barretts", 41, "barretts"),
    HyperKvasirClass("upper-gi-tract", "pathological-findings", "barretts-short-segment", 53,
                     "short-segment-barretts"),
    HyperKvasirClass("upper-gi-tract", "pathological-findings", "esophagitis-a", 403, "oesophagitis-a"),
    HyperKvasirClass("upper-gi-tract", "pathological-findings", "esophagitis-b-d", 260, "oesophagitis-b-d"),
]
HYPER_KVASIR_CLASSES = [c.folder for c in HYPER_KVASIR]
_TRACTS = {"upper-gi-tract": UPPER_GI, "lower-gi-tract": LOWER_GI}

# Every class the study knows, by region: Kvasir v2's in table order, then HyperKvasir's not named
# already, in path order (a model card lists them so).
REGION_OF = {c.name: c.region for c in KVASIR_V2} | {c.folder: _TRACTS[c.tract] for c in HYPER_KVASIR}
REGIONS = {region: tuple(name for name, where in REGION_OF.items() if where == region)
           for region in (UPPER_GI, LOWER_GI)}


def display_name(class_name: str) -> str:
    """A class as the paper's tables write it: ``dyed-lifted-polyps`` -> ``Dyed-lifted-polyps``."""
    return class_name[:1].upper() + class_name[1:]


# Each public dataset as the pages name it, keyed by data.dataset (other: the profile's data.name)
TITLES = {"kvasir-v2": "Kvasir v2", "hyper-kvasir": "HyperKvasir"}


def dataset_title(dataset: str, name: str) -> str:
    """What a run's pages call its data: ``Kvasir v2``, ``HyperKvasir``, or the user's own ``data.name``."""
    return TITLES.get(dataset, name)


# What to cite for each public dataset, and each dataset's terms (shown where the data is downloaded
# and on the index page), keyed by data.dataset; other is the user's own data.
CITATIONS = {
    "kvasir-v2": "Pogorelov, K., Randel, K. R., Griwodz, C., Eskeland, S. L., de Lange, T., Johansen, D., "
    "Spampinato, C., Dang-Nguyen, D.-T., Lux, M., Schmidt, P. T., Riegler, M., & Halvorsen, P. (2017). KVASIR: A "
    "Multi-Class Image Dataset for Computer Aided Gastrointestinal Disease Detection. Proceedings of the 8th ACM "
    "Multimedia Systems Conference (MMSys '17), 164-169. doi:10.1145/3083187.3083212. (The dataset.)",
    "hyper-kvasir": "Borgli, H., Thambawita, V., Smedsrud, P. H., Hicks, S., Jha, D., Eskeland, S. L., Randel, K. R., "
    "Pogorelov, K., Lux, M., Nguyen, D. T. D., Johansen, D., Griwodz, C., Stensland, H. K., Garcia-Ceja, E., "
    "Schmidt, P. T., Hammer, H. L., Riegler, M. A., Halvorsen, P., & de Lange, T. (2020). HyperKvasir, a "
    "comprehensive multi-class image and video dataset for gastrointestinal endoscopy. Scientific Data, 7, 283. "
    "doi:10.1038/s41597-020-00622-y. (The dataset.)",
}
TERMS = {
    "kvasir-v2": "Kvasir v2 terms of use (Simula): the dataset may be used for research and educational purposes "
    "only; any publication or presentation of results that uses it must cite the Kvasir paper (Pogorelov et al., "
    "MMSys 2017); commercial use needs the data owners' permission. Read the terms on the dataset's page, "
    "https://datasets.simula.no/kvasir/, before you download.",
    "hyper-kvasir": "HyperKvasir terms (Simula): its licence file gives the dataset under Creative Commons "
    "Attribution 4.0 International (CC BY 4.0), and its README asks for the data owners' permission before any "
    "commercial use; any publication or presentation of results that uses it must cite the HyperKvasir paper "
    "(Borgli et al., Scientific Data 7, 283, 2020). Read the terms on the dataset's page, "
    "https://datasets.simula.no/hyper-kvasir/, before you download.",
    "other": "Your own data (data.dataset: other): its terms of use and how to cite it are for you to check; "
    "the study adds none.",
}

DATASETS = tuple(TERMS)  # the values data.dataset takes


def citation(dataset: str) -> str | None:
    """How to cite ``dataset`` (a ``data.dataset`` value); None for your own data."""
    return CITATIONS.get(_known(dataset))


def terms(dataset: str) -> str:
    """The terms of use of ``dataset`` (a ``data.dataset`` value), to print before it is downloaded."""
    return TERMS[_known(dataset)]


def _known(dataset: str) -> str:
    if dataset not in TERMS:
        raise ValueError(f"unknown dataset {dataset!r}: data.dataset is one of {', '.join(DATASETS)}")
    return dataset
