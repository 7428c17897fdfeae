"""Rule-based prompt decomposition: scene, entities and motions without any model (C3V stage 1
done by rules instead of an LLM), plus a deterministic default 3D layout.

How a prompt is read (English, simple sentences):
1. The setting: the first prepositional phrase whose noun is a known place ("on the beach", "over
   the lake") or that reads "in/at/inside + determiner + noun" with a noun that is not a known
   object ("in a park"). It runs to the next clause boundary and becomes ``scene``.
2. Clauses: the rest is cut at ",", ";", "and", "while", "as", "whereas", "but", "then"; a piece
   that starts without a determiner ("white cat" in "a black and white cat") is glued back.
3. In each clause the first known verb splits subject from complement. The verb plus following
   direction words ("drives past", "runs from left to right") is the motion prompt. The subject
   (and companions joined by "with") are entities; noun phrases in the complement are static
   entities. Verbless subject clauses share the next clause's verb ("a dog and a cat play").
4. Locomotion verbs (drive, walk, fly, ...) make an entity move; in-place verbs (dance, sit,
   sleep, ...) only give it a motion prompt.

Default layout (scene units of the rig; CVD presets look at the point 1 unit ahead, so the scene
is built around ``focus_depth`` = 1): entities keep their typical real proportions from a small
noun table, uniformly scaled so a moving entity spans about a third of the view; they stand on a
ground plane seen at 80% of the image height at the focus depth (flying ones are placed in the air).
Movers run along lanes just in front of the focus depth, left to right unless the prompt says
otherwise ("right to left", "towards the camera", "away", "up", "down", "around X"); static
entities stand a little behind, spread across the view. Everything is deterministic.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .plan import PLAN_VERSION, resample_polyline, validate_plan

__all__ = ["decompose_prompt", "LOCOMOTION_VERBS", "IN_PLACE_VERBS"]

# CVD's N-view intrinsics: fx = 223.578 px at 256 px -> horizontal field of view ~59.6 degrees
CVD_HFOV_DEG = math.degrees(2 * math.atan(128.0 / 223.578))

LOCOMOTION_VERBS = (
    "drive", "walk", "run", "fly", "jump", "swim", "ride", "roll", "move", "cross", "pass", "race",
    "gallop", "trot", "hop", "crawl", "slide", "skate", "ski", "sail", "drift", "glide", "chase",
    "follow", "wander", "stroll", "jog", "sprint", "march", "climb", "travel", "speed", "cruise",
    "approach", "leave", "enter", "soar", "fall", "rise", "descend", "ascend", "circle", "orbit",
    "zoom", "dash", "rush", "go", "come", "head", "pace", "paddle", "surf", "cycle", "scurry",
    "waddle", "prowl", "slither", "flee", "charge", "bounce", "fly", "skip", "tiptoe", "limp",
    "float", "flow", "commute", "patrol", "roam", "stride", "sneak", "swoop", "dive", "leap",
)
IN_PLACE_VERBS = (
    "dance", "spin", "wave", "sit", "stand", "sleep", "eat", "drink", "read", "sing", "play", "rest",
    "lie", "wait", "stay", "look", "watch", "talk", "smile", "laugh", "cook", "bark", "sway", "burn",
    "shine", "glow", "grow", "bloom", "rotate", "turn", "nod", "hover", "blow", "stretch", "sniff",
    "graze", "perch", "pose", "kneel", "meditate", "juggle", "paint", "write", "type", "cry", "shake",
    "flutter", "flap", "explode", "sparkle", "twirl", "wobble", "idle", "stare", "yawn", "roar",
    "howl", "chirp", "work", "fight", "hug", "kiss", "point", "clap", "drum", "lean", "crouch",
)
FLYING_VERBS = {"fly", "soar", "glide", "hover", "flutter", "flap", "swoop"}
_IRREGULAR = {
    "ran": "run", "flew": "fly", "swam": "swim", "rode": "ride", "drove": "drive", "fell": "fall",
    "rose": "rise", "came": "come", "went": "go", "sat": "sit", "stood": "stand", "slept": "sleep",
    "ate": "eat", "sang": "sing", "lay": "lie", "lying": "lie", "leapt": "leap", "dove": "dive",
    "goes": "go", "fled": "flee", "spun": "spin", "grew": "grow", "drank": "drink", "blew": "blow",
}
_DETERMINERS = {
    "a", "an", "the", "one", "two", "three", "four", "five", "six", "some", "several", "many", "his",
    "her", "their", "its", "my", "our", "your", "this", "that", "these", "those", "another", "each",
}
_AUXILIARIES = {"is", "are", "was", "were", "be", "being", "been", "slowly", "quickly", "gently"}
_BOUNDARIES = {",", ";", "and", "while", "as", "whereas", "but", "then", "."}
# direction words kept in the motion prompt after the verb (they say how, not what)
_PARTICLES = {
    "past", "by", "across", "along", "around", "through", "toward", "towards", "away", "up", "down",
    "over", "into", "onto", "off", "out", "forward", "forwards", "backward", "backwards", "about",
    "round", "under", "fast", "leftward", "leftwards", "rightward", "rightwards", "upward", "upwards",
    "downward", "downwards", "closer", "back", "home", "together", "quickly", "slowly",
}
# whole direction phrases kept in the motion prompt ("runs from left to right")
_DIRECTION_PHRASES = [tuple(p.split()) for p in (
    "from left to right", "from right to left", "left to right", "right to left", "to the left",
    "to the right", "towards the camera", "toward the camera", "towards the viewer", "toward the viewer",
    "away from the camera", "away from the viewer", "into the distance", "towards us", "toward us",
    "in circles", "in a circle", "around and around", "back and forth", "up and down")]
# complement nouns that are never entities (the viewer, pronouns)
_NOT_ENTITIES = {"camera", "viewer", "us", "me", "them", "it", "him", "her", "distance", "circles", "circle"}
_PREPOSITIONS = (
    ("in", "front", "of"), ("next", "to"), ("on", "top", "of"), ("close", "to"), ("far", "from"),
    ("to", "the", "left", "of"), ("to", "the", "right", "of"), ("left", "of"), ("right", "of"),
    ("behind",), ("beside",), ("near",), ("under",), ("below",), ("above",), ("over",), ("past",),
    ("by",), ("toward",), ("towards",), ("around",), ("across",), ("along",), ("through",),
    ("into",), ("onto",), ("on",), ("in",), ("at",), ("between",), ("with",), ("from",), ("to",),
    ("among",), ("beneath",), ("inside",), ("outside",), ("within",), ("beyond",), ("against",),
)
_SCENE_PREPS = {"in", "at", "on", "inside", "within", "across", "through", "along", "over", "under",
                "by", "near", "beneath", "among", "into"}
_SCENE_DET_PREPS = {"in", "at", "inside", "within"}
SCENE_NOUNS = {
    "park", "beach", "street", "road", "forest", "woods", "city", "field", "meadow", "room", "kitchen",
    "desert", "garden", "lake", "river", "ocean", "sea", "sky", "mountain", "mountains", "hill",
    "hills", "snow", "grass", "sand", "space", "moon", "mars", "highway", "town", "village", "jungle",
    "farm", "stadium", "stage", "arena", "office", "bedroom", "classroom", "library", "museum",
    "market", "square", "plaza", "alley", "lot", "track", "countryside", "valley", "canyon", "cave",
    "underwater", "water", "pond", "island", "airport", "station", "sidewalk", "courtyard", "backyard",
    "yard", "playground", "studio", "cafe", "restaurant", "bar", "night", "sunset", "sunrise", "rain",
    "fog", "winter", "autumn", "world", "landscape", "background", "scene", "hallway", "corridor",
    "warehouse", "factory", "lab", "laboratory", "church", "temple", "palace", "ruins", "battlefield",
    "runway", "bay", "harbor", "harbour", "port", "shore", "coast", "cliff", "glacier", "savanna",
    "prairie", "swamp", "marsh", "orchard", "vineyard", "rooftop", "roof", "tunnel", "waves", "clouds",
    "street", "streets", "avenue", "boulevard", "downtown", "suburb", "neighborhood", "neighbourhood",
    "lawn", "courtyard", "pool", "ice", "grassland", "wilderness", "galaxy", "universe", "dusk",
    "dawn", "storm", "snowfield", "trail", "path", "racetrack", "circuit", "parking", "interior",
}
# head noun -> (kind, [width, height, depth] typical real size in metres)
NOUN_TABLE: Dict[str, Tuple[str, Tuple[float, float, float]]] = {}
for _kind, _entries in {
    "vehicle": {"car": (1.8, 1.5, 4.5), "truck": (2.5, 3.0, 8.0), "bus": (2.5, 3.2, 12.0),
                "bicycle": (0.6, 1.1, 1.8), "bike": (0.6, 1.1, 1.8), "motorcycle": (0.8, 1.2, 2.1),
                "motorbike": (0.8, 1.2, 2.1), "boat": (2.0, 1.5, 6.0), "ship": (12.0, 15.0, 60.0),
                "train": (3.0, 4.0, 25.0), "airplane": (30.0, 10.0, 35.0), "plane": (30.0, 10.0, 35.0),
                "helicopter": (3.0, 4.0, 12.0), "van": (2.0, 2.0, 5.0), "taxi": (1.8, 1.5, 4.5),
                "tractor": (2.0, 2.8, 4.0), "scooter": (0.6, 1.1, 1.4), "skateboard": (0.25, 0.1, 0.8),
                "jeep": (1.9, 1.9, 4.3), "tank": (3.5, 2.5, 8.0), "drone": (0.5, 0.2, 0.5),
                "rocket": (3.0, 30.0, 3.0), "spaceship": (20.0, 8.0, 30.0), "sailboat": (2.5, 8.0, 7.0)},
    "person": {name: (0.5, 1.75, 0.3) for name in (
        "person", "man", "woman", "boy", "girl", "child", "kid", "people", "astronaut", "dancer",
        "runner", "skier", "surfer", "cyclist", "knight", "robot", "soldier", "chef", "player",
        "ballerina", "cowboy", "ninja", "wizard", "princess", "king", "queen", "samurai", "student",
        "doctor", "police", "policeman", "lady", "gentleman", "zombie", "musician", "guitarist", "baby",
        "toddler", "teenager", "couple", "skater", "hiker", "jogger", "pedestrian", "clown", "pirate")},
    "animal": {"dog": (0.3, 0.6, 0.9), "puppy": (0.25, 0.35, 0.5), "cat": (0.2, 0.3, 0.5),
               "kitten": (0.15, 0.2, 0.3), "horse": (0.6, 1.7, 2.4), "cow": (0.8, 1.5, 2.4),
               "bird": (0.3, 0.2, 0.3), "eagle": (1.8, 0.5, 0.9), "duck": (0.3, 0.4, 0.5),
               "fish": (0.1, 0.2, 0.4), "elephant": (2.5, 3.0, 6.0), "bear": (1.0, 1.5, 2.0),
               "lion": (0.8, 1.2, 2.5), "tiger": (0.8, 1.1, 2.5), "deer": (0.5, 1.3, 1.8),
               "rabbit": (0.2, 0.3, 0.4), "bunny": (0.2, 0.3, 0.4), "panda": (0.8, 1.0, 1.5),
               "sheep": (0.5, 0.9, 1.3), "pig": (0.5, 0.8, 1.3), "giraffe": (1.5, 5.0, 2.5),
               "butterfly": (0.1, 0.05, 0.1), "dragon": (4.0, 4.0, 10.0), "dinosaur": (3.0, 5.0, 12.0),
               "squirrel": (0.1, 0.2, 0.3), "fox": (0.25, 0.45, 0.8), "wolf": (0.35, 0.8, 1.4),
               "monkey": (0.4, 0.6, 0.5), "penguin": (0.4, 0.8, 0.4), "turtle": (0.5, 0.3, 0.8),
               "shark": (1.0, 1.5, 4.0), "whale": (4.0, 3.0, 15.0), "dolphin": (0.6, 0.8, 2.5),
               "frog": (0.1, 0.08, 0.12), "chicken": (0.3, 0.4, 0.4), "goat": (0.4, 0.8, 1.2),
               "camel": (0.8, 2.0, 3.0), "zebra": (0.6, 1.4, 2.3), "owl": (0.3, 0.4, 0.3),
               "parrot": (0.2, 0.3, 0.3), "swan": (0.5, 0.8, 1.0), "bee": (0.03, 0.02, 0.03),
               "corgi": (0.3, 0.3, 0.8), "unicorn": (0.6, 1.8, 2.4), "crab": (0.3, 0.1, 0.2)},
    "plant": {"tree": (3.0, 6.0, 3.0), "bush": (1.2, 1.0, 1.2), "flower": (0.2, 0.4, 0.2),
              "flowers": (0.6, 0.4, 0.6), "cactus": (0.5, 1.5, 0.5), "plant": (0.5, 0.8, 0.5),
              "palm": (3.0, 8.0, 3.0), "sunflower": (0.4, 1.8, 0.4), "mushroom": (0.2, 0.2, 0.2)},
    "structure": {"house": (10.0, 7.0, 10.0), "building": (20.0, 30.0, 20.0), "tower": (8.0, 40.0, 8.0),
                  "castle": (40.0, 30.0, 40.0), "bridge": (30.0, 8.0, 6.0), "lighthouse": (6.0, 20.0, 6.0),
                  "fountain": (3.0, 2.0, 3.0), "statue": (1.0, 2.5, 1.0), "windmill": (6.0, 15.0, 6.0),
                  "tent": (3.0, 2.0, 3.0), "bench": (1.6, 0.8, 0.6), "lamppost": (0.3, 3.5, 0.3),
                  "streetlight": (0.3, 5.0, 0.3), "fence": (5.0, 1.2, 0.1), "hut": (4.0, 3.0, 4.0),
                  "cabin": (6.0, 4.0, 8.0), "pyramid": (50.0, 35.0, 50.0), "wall": (8.0, 3.0, 0.4),
                  "door": (1.0, 2.1, 0.1), "gate": (3.0, 2.5, 0.3), "barn": (12.0, 8.0, 15.0)},
    "object": {"ball": (0.22, 0.22, 0.22), "balloon": (0.5, 0.6, 0.5), "box": (0.5, 0.5, 0.5),
               "chair": (0.5, 0.9, 0.5), "table": (1.5, 0.75, 0.9), "sofa": (2.0, 0.9, 0.9),
               "couch": (2.0, 0.9, 0.9), "umbrella": (1.0, 1.0, 1.0), "kite": (1.0, 1.0, 0.2),
               "cup": (0.1, 0.12, 0.1), "book": (0.2, 0.05, 0.3), "guitar": (0.4, 1.0, 0.1),
               "rock": (1.0, 0.8, 1.0), "stone": (0.5, 0.4, 0.5), "barrel": (0.6, 0.9, 0.6),
               "ufo": (6.0, 3.0, 6.0), "piano": (1.5, 1.0, 0.6), "lamp": (0.4, 0.6, 0.4),
               "vase": (0.2, 0.4, 0.2), "bottle": (0.08, 0.3, 0.08), "teddy": (0.3, 0.4, 0.3),
               "toy": (0.3, 0.3, 0.3), "campfire": (1.0, 0.8, 1.0), "fire": (1.0, 1.0, 1.0),
               "snowman": (0.8, 1.7, 0.8), "bucket": (0.3, 0.35, 0.3), "bag": (0.4, 0.5, 0.2),
               "clock": (0.4, 0.4, 0.1), "computer": (0.5, 0.4, 0.3), "tv": (1.2, 0.7, 0.1),
               "cake": (0.3, 0.2, 0.3), "pumpkin": (0.5, 0.4, 0.5), "sign": (1.0, 2.0, 0.1)},
}.items():
    for _noun, _size in _entries.items():
        NOUN_TABLE[_noun] = (_kind, _size)
_DEFAULT_KIND_SIZE = ("object", (0.6, 0.6, 0.6))


def _verb_forms(verb: str) -> List[str]:
    forms = {verb, verb + "s", verb + "es", verb + "ing", verb + "ed"}
    if verb.endswith("e"):
        forms |= {verb[:-1] + "ing", verb + "d"}
    if verb.endswith("ie"):
        forms.add(verb[:-2] + "ying")
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        forms |= {verb[:-1] + "ies", verb[:-1] + "ied"}
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", verb):  # run -> running, hop -> hopped
        forms |= {verb + verb[-1] + "ing", verb + verb[-1] + "ed"}
    return sorted(forms)


_VERB_LOOKUP: Dict[str, str] = {}
for _verb in IN_PLACE_VERBS + LOCOMOTION_VERBS:  # locomotion wins when a form is shared
    for _form in _verb_forms(_verb):
        _VERB_LOOKUP[_form] = _verb
_VERB_LOOKUP.update(_IRREGULAR)
_LOCOMOTION = set(LOCOMOTION_VERBS)


def _tokenize(text: str) -> List[str]:
    return re.findall(r"[A-Za-z0-9'\-]+|[,;.]", text)


def _low(tokens: Sequence[str]) -> List[str]:
    return [t.lower() for t in tokens]


def _match_preposition(low: Sequence[str], i: int) -> Optional[Tuple[str, ...]]:
    for prep in _PREPOSITIONS:  # longest multiword prepositions are listed first
        if tuple(low[i:i + len(prep)]) == prep:
            return prep
    return None


def _head_noun(tokens: Sequence[str]) -> str:
    words = [t.lower() for t in tokens if re.fullmatch(r"[A-Za-z][A-Za-z'\-]*", t)]
    return words[-1] if words else ""


def _lookup_noun(noun: str) -> Tuple[str, Tuple[float, float, float]]:
    for candidate in (noun, noun[:-1] if noun.endswith("s") else None, noun[:-2] if noun.endswith("es") else None):
        if candidate and candidate in NOUN_TABLE:
            return NOUN_TABLE[candidate]
    return _DEFAULT_KIND_SIZE


def _phrase_end(low: Sequence[str], start: int) -> int:
    """Index of the clause boundary ending a phrase that starts at ``start``."""
    for j in range(start, len(low)):
        if low[j] in _BOUNDARIES:
            return j
    return len(low)


def _noun_phrase_end(low: Sequence[str], start: int, stop: int) -> int:
    """End of the noun phrase at ``start``: before the next preposition, verb or ``stop``."""
    for j in range(start + 1, stop):
        if _match_preposition(low, j) or (low[j] in _VERB_LOOKUP and low[j - 1] not in _DETERMINERS):
            return j
    return stop


def _extract_scene(tokens: List[str]) -> Tuple[str, List[str]]:
    """(setting phrase, tokens without it); the setting is '' when none is found."""
    low = _low(tokens)
    for i, word in enumerate(low):
        prep = _match_preposition(low, i)
        if prep is None or len(prep) != 1 or word not in _SCENE_PREPS:
            continue
        end = _phrase_end(low, i + 1)
        if end == i + 1:
            continue
        noun_end = _noun_phrase_end(low, i + 1, end)
        head = _head_noun(tokens[i + 1:noun_end])
        is_place = head in SCENE_NOUNS
        det_place = word in _SCENE_DET_PREPS and low[i + 1] in _DETERMINERS and head not in NOUN_TABLE \
            and _lookup_noun(head) is _DEFAULT_KIND_SIZE and head not in _VERB_LOOKUP
        if is_place or det_place:
            scene = " ".join(tokens[i + 1:end])
            return scene, tokens[:i] + tokens[end:]
    return "", tokens


def _split_clauses(tokens: List[str]) -> List[List[str]]:
    clauses: List[List[str]] = [[]]
    for token in tokens:
        if token.lower() in _BOUNDARIES:
            clauses.append([])
        else:
            clauses[-1].append(token)
    merged: List[List[str]] = []
    for clause in clauses:
        if not clause:
            continue
        first = clause[0].lower()
        starts_phrase = first in _DETERMINERS or first.isdigit() or first in ("there", "it", "he", "she", "they")
        if merged and not starts_phrase and not any(t.lower() in _VERB_LOOKUP for t in clause[:1]):
            merged[-1] = merged[-1] + ["and"] + clause  # "a black" + "white cat runs"
        else:
            merged.append(clause)
    return merged


def _find_verb(low: Sequence[str]) -> Optional[int]:
    for i, word in enumerate(low):
        if word in _VERB_LOOKUP and i > 0 and low[i - 1] not in _DETERMINERS:
            return i
    return None


def _noun_phrases(tokens: List[str]) -> List[Tuple[str, List[str]]]:
    """(relation, phrase tokens) for each determiner-led noun phrase (relation: preceding preposition)."""
    low = _low(tokens)
    out, i, relation = [], 0, ""
    while i < len(tokens):
        prep = _match_preposition(low, i)
        if prep:
            relation = " ".join(prep)
            i += len(prep)
            continue
        if low[i] in _DETERMINERS or low[i].isdigit():
            end = _noun_phrase_end(low, i, len(tokens))
            # trailing adverbs are motion, not appearance
            while end > i + 1 and low[end - 1].endswith("ly"):
                end -= 1
            out.append((relation, tokens[i:end]))
            relation = ""
            i = end
            continue
        i += 1
    return out


def _direction(low_clause: str) -> str:
    if re.search(r"right to (the )?left|leftwards?|to the left|westward", low_clause):
        return "right_to_left"
    if re.search(r"towards? (the )?(camera|viewer|us|me)|\bapproach|closer|\bcom(es|ing)\b", low_clause):
        return "toward"
    if re.search(r"\baway\b|\bleav(es|ing)\b|into the distance", low_clause):
        return "away"
    if re.search(r"\b(up|upwards?|ris(es|ing)|ascend\w*|takes off|lift(s|ing)? off)\b", low_clause):
        return "up"
    if re.search(r"\b(down|downwards?|fall(s|ing)?|descend\w*|land(s|ing))\b", low_clause):
        return "down"
    if re.search(r"\b(around|circl\w*|orbit\w*|round)\b", low_clause):
        return "around"
    return "left_to_right"


def _parse(prompt: str) -> Tuple[str, List[dict]]:
    """Scene phrase and raw entity records (prompt tokens, verb, motion, relation, direction)."""
    tokens = _tokenize(prompt)
    scene, rest = _extract_scene(tokens)
    records: List[dict] = []
    pending_subjects: List[dict] = []
    for clause in _split_clauses(rest):
        low = _low(clause)
        if low[:2] in (["there", "is"], ["there", "are"]):
            clause, low = clause[2:], low[2:]
        verb_at = _find_verb(low)
        if verb_at is None:
            phrases = _noun_phrases(clause)
            if not phrases and clause and _head_noun(clause) not in SCENE_NOUNS | _NOT_ENTITIES:
                phrases = [("", clause)]  # bare noun ("cars"), kept as an entity
            phrases = [(rel, p) for rel, p in phrases if _head_noun(p) not in SCENE_NOUNS | _NOT_ENTITIES]
            new = [dict(tokens=p, verb=None, motion="", relation=rel, direction="") for rel, p in phrases]
            if new:
                pending_subjects.append(new[0])
            records.extend(new)
            continue
        verb = _VERB_LOOKUP[low[verb_at]]
        end = verb_at + 1
        while end < len(low):
            phrase = next((p for p in _DIRECTION_PHRASES if tuple(low[end:end + len(p)]) == p), None)
            if phrase is not None:
                end += len(phrase)
            elif low[end] in _PARTICLES or (low[end].endswith("ly") and len(low[end]) > 3):
                end += 1
            else:
                break
        motion = " ".join(w for w in clause[verb_at:end] if w.lower() not in _AUXILIARIES)
        direction = _direction(" ".join(low[verb_at:]))
        subject = [t for t in clause[:verb_at] if t.lower() not in _AUXILIARIES]
        subject_phrases = _noun_phrases(subject) or ([("", subject)] if subject else [])
        for k, (rel, phrase) in enumerate(subject_phrases):
            records.append(dict(tokens=phrase, verb=verb, motion=motion, relation=rel if k else "",
                                direction=direction))
        for pending in pending_subjects:  # "a dog and a cat play": the dog plays too
            pending.update(verb=verb, motion=motion, direction=direction)
        pending_subjects = []
        target = None
        for rel, phrase in _noun_phrases(clause[end:] if end < len(clause) else []):
            if _head_noun(phrase) in _NOT_ENTITIES or _head_noun(phrase) in SCENE_NOUNS:
                continue
            record = dict(tokens=phrase, verb=None, motion="", relation=rel, direction="")
            records.append(record)
            target = target or record
        if target is not None:
            for rec in records:
                if rec.get("verb") == verb and rec.get("target") is None and rec["tokens"] is not target["tokens"]:
                    rec["target"] = target
        pending_subjects = []
    return scene, records


def _make_ids(records: List[dict]) -> List[str]:
    ids, counts = [], {}
    for rec in records:
        base = re.sub(r"[^a-z0-9_\-]", "", _head_noun(rec["tokens"]) or "entity") or "entity"
        counts[base] = counts.get(base, 0) + 1
        ids.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
    return ids


def _layout(records: List[dict], frames: int, focus_depth: float, hfov_deg: float, aspect: float) -> List[list]:
    """Per-record list of 3D centre points (already resampled to ``frames``) and the sizes."""
    tan_half = math.tan(math.radians(hfov_deg) / 2)
    view_w = 2 * focus_depth * tan_half
    view_h = view_w / aspect
    real = [_lookup_noun(_head_noun(r["tokens"]))[1] for r in records]
    movers = [i for i, r in enumerate(records) if r.get("verb") in _LOCOMOTION]
    reference = movers or list(range(len(records)))
    scale = 0.35 * view_w / max(max(real[i][0], real[i][2]) for i in reference)
    # one scale keeps proportions; an entity that would be taller than 60% of the view at the focus
    # depth (a windmill beside a horse) is shrunk alone rather than shrinking everything
    sizes = [[v * min(scale, 0.6 * view_h / size[1]) for v in size] for size in real]
    ground_per_depth = 0.6 * tan_half / aspect  # ground seen at 80% of the image height: y/z = 0.3 * 2 tan/aspect

    def standing_y(index: int, depth: float, flying: bool) -> float:
        if flying:  # centre at 30% of the image height
            return -0.4 * tan_half / aspect * depth
        return ground_per_depth * focus_depth - sizes[index][1] / 2  # on the ground plane (y = const)

    static = [i for i in range(len(records)) if i not in movers]
    positions: Dict[int, np.ndarray] = {}
    static_depth = 1.3 * focus_depth
    xs = np.linspace(-0.5, 0.5, len(static) + 2)[1:-1] * static_depth * tan_half if static else []
    for x, i in zip(xs, static):
        positions[i] = np.array([[x, standing_y(i, static_depth, False), static_depth]])
    for lane, i in enumerate(movers):
        rec = records[i]
        flying = rec["verb"] in FLYING_VERBS
        depth = focus_depth * (0.85 + 0.15 * lane)
        half = 0.55 * depth * tan_half
        y = standing_y(i, depth, flying)
        direction = rec.get("direction") or "left_to_right"
        if direction == "right_to_left":
            way = [[half, y, depth], [-half, y, depth]]
        elif direction in ("toward", "away"):
            far, near = 1.8 * focus_depth, 0.6 * focus_depth
            ys = [standing_y(i, far, flying), standing_y(i, near, flying)]
            way = [[0.0, ys[0], far], [0.0, ys[1], near]]
            way = way if direction == "toward" else way[::-1]
        elif direction in ("up", "down"):
            low_y, high_y = ground_per_depth * focus_depth - sizes[i][1] / 2, -0.5 * tan_half / aspect * depth
            way = [[0.0, low_y, depth], [0.0, high_y, depth]]
            way = way if direction == "up" else way[::-1]
        elif direction == "around":
            target = rec.get("target")
            t_index = next((k for k, r in enumerate(records) if target is not None and r is target), None)
            centre = positions.get(t_index, np.array([[0.0, y, static_depth]]))[0] if t_index is not None \
                else np.array([0.0, y, focus_depth])
            foot = max(sizes[i][0], sizes[i][2])
            radius = (max(sizes[t_index][0], sizes[t_index][2]) / 2 + foot) if t_index is not None else 0.3 * depth
            angles = np.linspace(math.pi, math.pi - 1.5 * math.pi, 25)  # from the left, round the front
            way = [[centre[0] + radius * math.cos(a), y, centre[2] - radius * math.sin(a)] for a in angles]
        else:
            way = [[-half, y, depth], [half, y, depth]]
        positions[i] = resample_polyline(way, frames)
    return [positions[i].tolist() for i in range(len(records))], sizes


def decompose_prompt(prompt: str, frames: int = 16, *, focus_depth: float = 1.0,
                     hfov_deg: float = CVD_HFOV_DEG, aspect: float = 1.0) -> dict:
    """Split ``prompt`` into a scene plan by rules (no model), with a default 3D layout.

    "a red car drives past a tree in a park" -> scene "a park", entities "a red car" (motion "drives
    past", moving left to right) and "a tree" (static). ``frames``: trajectory length.
    ``focus_depth``: distance of the layout's centre from the camera in scene units (1 = where the
    CVD preset cameras look); ``hfov_deg``/``aspect`` (W/H): the view the layout is framed for.
    Deterministic; returns a validated plan (see :mod:`cvd_core.scene.plan`).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    text = " ".join(prompt.strip().split())
    scene, records = _parse(text)
    # records that repeat an earlier entity ("the car" after "a car") are the same entity
    seen, unique = set(), []
    for rec in records:
        words = [w.lower() for w in rec["tokens"]]
        key = " ".join(words[1:] if words and words[0] in _DETERMINERS else words)
        if key and key not in seen:
            seen.add(key)
            unique.append(rec)
        elif key in seen and rec.get("verb"):
            for other in unique:
                other_words = [w.lower() for w in other["tokens"]]
                other_key = " ".join(other_words[1:] if other_words and other_words[0] in _DETERMINERS
                                     else other_words)
                if other_key == key and not other.get("verb"):
                    other.update(verb=rec["verb"], motion=rec["motion"], direction=rec["direction"])
    records = unique
    trajectories, sizes = _layout(records, frames, focus_depth, hfov_deg, aspect) if records else ([], [])
    entities = []
    for rec, entity_id, trajectory, size in zip(records, _make_ids(records), trajectories, sizes):
        kind = _lookup_noun(_head_noun(rec["tokens"]))[0]
        entities.append({
            "id": entity_id,
            "prompt": " ".join(rec["tokens"]),
            "kind": kind,
            "motion": rec["motion"],
            "size": [round(s, 6) for s in size],
            "trajectory_3d": trajectory,
            "facing": "next_point",
        })
    # a prompt without any entity ("sunset over the ocean") is all setting
    plan = {"version": PLAN_VERSION, "prompt": text, "scene": scene if entities else text, "frames": frames,
            "entities": entities}
    return validate_plan(plan)[0]
