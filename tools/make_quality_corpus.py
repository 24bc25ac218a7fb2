#!/usr/bin/env python3
"""Generate the quality corpus: twelve simulated two-party contact-centre calls with per-turn text.

Each call is an agent (Twilio "outbound" track) and a customer ("inbound" track) talking turn by
turn: very short replies ("Yes.", "Okay."), one-second answers, sentences of two to five seconds
and, in most calls, a monologue of nine to fourteen seconds read by the agent with natural pauses
(two to four segments on the same track, 250-600 ms apart). The speakers give account, card,
phone and policy numbers digit by digit, PINs, dates, e-mail addresses, street addresses and
names. The reference text is written the way it is spoken (digits as words, "dot" and "at").

The calls use many voices, speaking rates, pitches and levels (each speaker levelled to an
active-speech RMS target between -30 and -13 dBFS, peaks at most -3 dBFS), and some have steady
low-level line noise on both tracks. They are split in two: eight "tuning" calls and four
"held-back" calls, each of whose voices is new to the tuning calls (an espeak-ng voice+variant
no tuning call uses, or a festival voice at a rate no tuning call uses); the held-back calls are
never used to choose settings.

Five more calls (``DOMAIN_CALLS``: three tuning, two held-back, 18-35 s, no monologue) measure call
vocabularies: their scripts say their tenant's made-up brand, plan and agent names and jargon,
and ``corpus.json`` lists each one's ``vocabulary`` and the terms it says (``termsSaid``). They
were added after the twelve, whose bytes they leave unchanged.

Every call is written like the bundled sample call (``tools/make_sample_call.py``, whose text to
speech, telephone band-limiting, levelling, mu-law encoder and encoder checks this script uses):
``<call id>/inbound.ulaw``, ``outbound.ulaw`` (8 kHz G.711 mu-law, the same length, whole 20 ms
frames) and ``timeline.json`` (controls and segments, start/end measured from the encoded audio).
``corpus.json`` lists the calls with their split, voices (``levelDbfs``: the speaker's
active-speech RMS as measured on the encoded track), noise, duration and turns (speaker changes
plus one).

Timeline of every call: start at 300 ms, first speech at 1200 ms, the stop 1600 ms after the last
segment ends and 600 ms more of audio (silence or line noise) after the stop.

Segment boundaries are the first and last sample at or above -50 dBFS of the segment's own sound,
found in the encoded track. On a call with line noise they are found in the encoding of the speech
before the noise is added (the noise alone crosses that threshold); the tracks written out carry
the same speech plus the noise.

The script is deterministic (sox runs with ``-R -D``; gaps come from a hash of the call id): running
it again gives identical bytes. It checks its own output (timing rules, text rules, splits, sizes)
and refuses to write a corpus that breaks them.

Run it with any Python that has numpy, from the repository root::

    .venv/bin/python tools/make_quality_corpus.py                 # callscribe/samples/quality/
    .venv/bin/python tools/make_quality_corpus.py --out /tmp/qc   # somewhere else

Needs these Debian packages (``apt-get install -y ...``)::

    sox espeak-ng festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sample_call as base  # noqa: E402

RATE = base.RATE
MS = base.SAMPLES_PER_MS
FRAME = base.FRAME_SAMPLES

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "callscribe" / "samples" / "quality"

START_MS = 300  # the start control
FIRST_SPEECH_MS = 1200  # sound of the first segment starts here
STOP_AFTER_MS = 1600  # the stop control, after the end of the last segment
TAIL_AFTER_STOP_MS = 600  # audio after the stop
SOUND_THRESHOLD = 32768 * 10 ** (base.SOUND_THRESHOLD_DBFS / 20)

# Gaps (ms) between the sound of one segment and the next, by the kind of line that follows.
GAPS_MS = {
    "turn": (400, 1000),  # the other speaker answers
    "quick": (150, 300),  # the other speaker answers at once
    "pause": (250, 600),  # the same speaker goes on after a pause (monologue)
}

MAX_CORPUS_BYTES = 11_000_000  # everything written

REQUIRED_TOOLS = {
    "sox": "sox",
    "espeak-ng": "espeak-ng",
    "text2wave": "festival (plus festvox-us-slt-hts, festvox-kallpc16k, festvox-kdlpc16k)",
}
FESTIVAL_VOICES = ("voice_cmu_us_slt_arctic_hts", "voice_kal_diphone", "voice_ked_diphone")


@dataclass(frozen=True)
class Voice:
    engine: str  # "festival" or "espeak-ng"
    name: str  # festival voice function, or espeak-ng voice with its variant ("en-gb+f3")
    rate: float  # espeak-ng words per minute, or festival Duration_Stretch (above 1 is slower)
    pitch: int | None  # espeak-ng -p (0-99); None for festival
    level_dbfs: float  # target active-speech RMS


def festival(name: str, stretch: float, level: float) -> Voice:
    return Voice("festival", f"voice_{name}", stretch, None, level)


def espeak(name: str, wpm: int, pitch: int, level: float) -> Voice:
    return Voice("espeak-ng", name, wpm, pitch, level)


@dataclass(frozen=True)
class Call:
    id: str
    split: str  # "tuning" or "held-back"
    customer_id: str
    agent_id: str
    agent: Voice
    customer: Voice
    noise: tuple[str, float] | None  # (sox noise type, RMS dBFS) on both tracks
    script: str  # one line per segment, see parse_script
    # A domain call's vocabulary: the tenant's product, plan and agent names and jargon, as the
    # call would be given them. Most are said in the script; at least one is not (a tenant's
    # list is longer than one call). Empty for the general calls.
    vocabulary: tuple[str, ...] = ()


@dataclass(frozen=True)
class Line:
    speaker: str  # "agent" or "customer"
    gap: str  # key of GAPS_MS: the silence before this line
    text: str
    pin: bool


# --------------------------------------------------------------------------------------------
# The calls
#
# Script lines: "A:" agent, "C:" customer, then optionally "~" (answers at once, 150-300 ms),
# "+" (same speaker goes on after a pause: the next part of a monologue) and "!" (the line holds
# a PIN or card number). The gap before a line is otherwise 400-1000 ms.

CALLS = [
    Call(
        "q01-slt-usm3",
        "tuning",
        "BT4471902",
        "RE310558271406",
        festival("cmu_us_slt_arctic_hts", 1.0, -19),
        espeak("en-us+m3", 165, 45, -22),
        None,
        """
        A: Brightline Television billing, this is Emma. How can I help?
        C: Hi. I was charged twice for my monthly plan.
        A~: Sorry about that. What is your account number?
        C: Seven three zero two, five five eight one.
        A: And the last four digits of the card?
        C~!: Four four nine two.
        A: Thank you. I will refund the second payment now.
        C~: Great.
        A: Please note a few things.
        A+: Refunds go back to the card that was charged, and take up to five days.
        A+: If you do not see it by the twelfth of May, call us and quote eight one six four.
        C: Okay. Thank you.
        A: You are welcome. Goodbye.
        """,
    ),
    Call(
        "q02-gbf2-kal",
        "tuning",
        "PP20938841",
        "AGT-55170",
        espeak("en-gb+f2", 150, 55, -16),
        festival("kal_diphone", 1.0, -26),
        ("pinknoise", -58),
        """
        A: Parcel Point customer service, Laura speaking.
        C: My order has not arrived.
        A: What is the order number, please?
        C: Three eight eight zero, one two four seven.
        A: Thank you. And the delivery address?
        C: Twenty two Maple Avenue, Springfield.
        A: The courier came on Tuesday, but nobody was home.
        C~: Okay.
        A: We can deliver again on Friday.
        C~: Yes, please.
        A: Is your phone number still five five five, zero one nine eight?
        C: No, it is now five five five, three four six two.
        A~: Thank you, I have updated it.
        C: Thank you.
        """,
    ),
    Call(
        "q03-ked-carf2",
        "held-back",
        "SKY77120458",
        "RE884120937755",
        festival("ked_diphone", 1.0, -20),
        espeak("en-029+f2", 170, 55, -23),
        None,
        """
        A: Skyway Airlines, David speaking.
        C: I need to change the date of my flight.
        A~: What is your booking number?
        C: Six two zero nine, one four three.
        A: Which new date would you like?
        C: The twenty first of August, in the morning.
        A: There is a seat on the early flight at twenty past eight.
        A+: The change fee is forty five dollars, and the fare is the same.
        A+: Your new ticket will be sent to the email on the booking.
        C~: Okay.
        A: And a card for the fee?
        C!: Five four two five, seven seven one zero, three eight six six, nine zero two one.
        A: Thank you. You are all set.
        C: Thank you.
        """,
    ),
    Call(
        "q04-kal-rpf1",
        "tuning",
        "HIC-0093117",
        "AG4410027",
        festival("kal_diphone", 0.9, -24),
        espeak("en-gb-x-rp+f1", 150, 55, -18),
        None,
        """
        A: Harbour Insurance claims, this is Peter.
        C: Hello. I need to report an accident.
        A: I am sorry to hear that. What is your policy number?
        C: Nine zero three one, four seven seven two.
        A: Thank you. Was anyone hurt?
        C~: No, nobody.
        A: Good. I will open a claim now.
        A+: A repairer will call you within two working days to book an inspection.
        A+: Please keep any photos, and do not arrange repairs until we approve them.
        C~: Sure.
        A: Your claim number is two six one eight, zero zero four five.
        C: Thank you. That is very helpful.
        A~: You are welcome.
        """,
    ),
    Call(
        "q05-slt-scotm4",
        "tuning",
        "NB-31870045",
        "RE529006114873",
        festival("cmu_us_slt_arctic_hts", 1.1, -28),
        espeak("en-gb-scotland+m4", 145, 45, -21),
        ("brownnoise", -52),
        """
        A: Northbank card services, Grace speaking.
        C: Hi. I have lost my debit card and I need to block it.
        A~: I can do that. What is your full name?
        C: Neil Walker.
        A: And your date of birth?
        C: The second of March, nineteen eighty six.
        A: For security, please say your telephone banking PIN.
        C!: Three eight one five.
        A!: Thank you. The card ending in six zero two seven is now blocked.
        C~: Okay.
        A: A new card will reach twelve Elm Street within five working days.
        C: Will my PIN stay the same?
        A~: Yes, it will.
        C: Great. Thank you.
        """,
    ),
    Call(
        "q06-nycm5-scotm3",
        "held-back",
        "FN-6610293",
        "AGT-90412",
        espeak("en-us-nyc+m5", 160, 40, -27),
        espeak("en-gb-scotland+m3", 165, 45, -17),
        ("brownnoise", -55),
        """
        A: Fastnet broadband support, this is Andrew.
        C: Hi. My internet keeps dropping.
        A: Sorry about that. What is your account number?
        C: One zero zero four, eight six three nine.
        A: And the phone number on the account?
        C: Five five five, two seven one, four four zero eight.
        A: I will restart your router from here.
        A+: The lights will flash for about two minutes, and then the green light should stay on.
        A+: If it drops again tonight, an engineer can visit on Thursday.
        C~: Okay.
        A: Is the green light on now?
        C~: Yes, it is.
        A: Great. Anything else?
        C~: No.
        """,
    ),
    Call(
        "q07-usf2-kal",
        "tuning",
        "GCP-204417",
        "RE118034662590",
        espeak("en-us+f2", 155, 65, -14),
        festival("kal_diphone", 1.05, -20),
        None,
        """
        A: Green Cross Pharmacy, Anna speaking.
        C: I would like a repeat prescription.
        A: What is your date of birth?
        C: The ninth of November, nineteen fifty four.
        A: And your name and address?
        C: Robert Hughes, forty one Church Lane.
        A: Thank you. Your tablets will be ready tomorrow afternoon.
        A+: Our driver delivers on Wednesdays, so you should have them by lunchtime.
        A+: If you are out, we will leave a card with our number.
        C~: That is fine.
        A: Is your phone number still five five five, zero eight two six?
        C~: Yes.
        A: Lovely. Goodbye.
        """,
    ),
    Call(
        "q08-slt-gbm4",
        "tuning",
        "OM7702914",
        "AG5038812",
        festival("cmu_us_slt_arctic_hts", 0.9, -18),
        espeak("en-gb+m4", 185, 50, -30),
        ("pinknoise", -50),
        """
        A: Hi, Orbit Mobile, Lucy speaking. How can I help?
        C: Hi. I would like to upgrade my phone plan.
        A: Sure. What is the mobile number on the account?
        C: Zero seven seven zero zero, nine one four, two three eight.
        A: And your email address?
        C: It is tom dot baker at example dot net.
        A: The unlimited plan is thirty pounds a month.
        C: Does that include calls abroad?
        A~: No, it does not.
        C: Okay. I will take it anyway.
        A: Done. It starts on the first of July.
        C~: Thanks.
        A: Thank you for calling. Bye for now.
        """,
    ),
    Call(
        "q09-wmdf1-ked",
        "held-back",
        "RH-5520671",
        "RE660271938412",
        espeak("en-gb-x-gbcwmd+f1", 155, 60, -23),
        festival("ked_diphone", 0.85, -15),
        ("pinknoise", -48),
        """
        A: Riverside Hotel, Helen speaking.
        C: I would like a double room.
        A: For which dates?
        C: The tenth to the twelfth of October.
        A: Yes. May I have your name?
        C: Daniel Foster.
        A: A card to hold it, please.
        C!: Four nine one six, three zero two eight, five five one seven, two six four zero.
        A: Thank you, the room is booked.
        A+: Check in is from three in the afternoon, and breakfast is served until ten.
        A+: You can cancel free of charge until two days before you arrive.
        C~: Perfect.
        A: And your email?
        C: Daniel dot foster at example dot org.
        A: Thank you. Goodbye.
        """,
    ),
    Call(
        "q10-rpm7-usf4",
        "tuning",
        "WE-88213094",
        "AGT-31166",
        espeak("en-gb-x-rp+m7", 145, 30, -26),
        espeak("en-us+f4", 170, 70, -17),
        ("pinknoise", -60),
        """
        A: Westfield Energy, Mark speaking.
        C: Hi. I want to give a meter reading.
        A~: Sure. What is your customer number?
        C: Eight two seven one, six zero three nine.
        A: And the first line of your address?
        C: Seventeen Oak Drive.
        A: Go ahead with the reading.
        C: Four five one eight two.
        A: Thanks. That is a little higher than usual.
        A+: Your next bill will use this reading, and it will be sent on the fifth of January.
        A+: If you pay by direct debit, nothing else is needed from you.
        C~: Okay.
        A: Anything else today?
        C~: No.
        A: Then thank you for calling.
        """,
    ),
    Call(
        "q11-kal-lancf3",
        "tuning",
        "PF-4402618",
        "RE207745190368",
        festival("kal_diphone", 1.15, -20),
        espeak("en-gb-x-gbclan+f3", 130, 60, -24),
        None,
        """
        A: Peak Fitness, this is Tom.
        C: I would like to cancel my membership.
        A: What is your membership number?
        C: Six six one zero, four three five two.
        A: Thank you. Is that Karen Walsh?
        C~: Yes, it is.
        A: Your contract needs thirty days of notice.
        A+: So your last payment will be on the twenty eighth of February.
        A+: You can still use the gym until the end of that month.
        C~: Fine.
        A: Shall I email the confirmation to karen dot walsh at example dot com?
        C~: Yes, please.
        A: Done. Good luck.
        """,
    ),
    Call(
        "q12-slt-nycf4",
        "held-back",
        "SD-1190374",
        "AG8817305",
        festival("cmu_us_slt_arctic_hts", 1.2, -29),
        espeak("en-us-nyc+f4", 190, 68, -19),
        None,
        """
        A: Smile Dental, this is Sophie.
        C: Hi. I need to move my appointment.
        A~: Sure. What is your name and date of birth?
        C: Michael Reed, the fourth of April, nineteen ninety.
        A: You are booked for Monday at ten.
        C: Do you have anything on Wednesday?
        A: We have Wednesday at half past two.
        C~: That works.
        A: Is your number still five five five, zero nine four three?
        C~: Yes, it is.
        A: Great. Please arrive ten minutes early.
        C~: Sure.
        A: See you on Wednesday. Bye.
        """,
    ),
]


# Domain calls: shorter (18-35 s), no monologue, each with its tenant's vocabulary of made-up
# brand, product and plan names, agent names Whisper rarely spells right, and jargon ("PIN",
# "on hold"). Three tuning, two held back; every held-back voice is new to every tuning call,
# and no tuning call uses a voice of a held-back general call.
DOMAIN_CALLS = [
    Call(
        "q13-slt-usm2",
        "tuning",
        "ZF5520931",
        "RE512209384411",
        festival("cmu_us_slt_arctic_hts", 1.0, -20),
        espeak("en-us+m2", 160, 50, -21),
        None,
        """
        A: Zentrova Fibre Max support, this is Siobhan.
        C: Hi. My Nimbus Hub keeps losing the connection.
        A~: Sorry about that. Can you tell me your account PIN?
        C!: Four two seven one.
        A: Thank you. I will put you on hold while I test the line.
        C~: Okay.
        A: Thanks for holding. I have reset your Nimbus Hub from here.
        C: Will I keep my Zentrova Fibre Max speed?
        A~: Yes, you will.
        C: Great. Thank you, Siobhan.
        """,
        ("Zentrova Fibre Max", "Nimbus Hub", "Siobhan", "PIN", "on hold", "Velocity Boost"),
    ),
    Call(
        "q14-gbf3-kal",
        "tuning",
        "KM88120457",
        "AGT-61203",
        espeak("en-gb+f3", 150, 55, -18),
        festival("kal_diphone", 1.0, -24),
        ("pinknoise", -56),
        """
        A: Kestrel Mobile, you are through to Aoife.
        C: Hi. I want to move from the Kestrel Silver plan to the Kestrel Gold plan.
        A: Of course. What is your account PIN?
        C!: Nine three zero eight.
        A: Thank you. The Kestrel Gold plan includes a roaming pass for Europe.
        C~: Lovely.
        A: It starts tomorrow. Can I put you on hold for a moment?
        C~: Sure.
        A: Done. Is there anything else today?
        C: No, thanks Aoife.
        """,
        (
            "Kestrel Gold plan",
            "Kestrel Silver plan",
            "Aoife",
            "PIN",
            "on hold",
            "roaming pass",
            "Quillon Secure",
        ),
    ),
    Call(
        "q15-kal-rpm3",
        "tuning",
        "BW30718842",
        "RE660193021187",
        festival("kal_diphone", 0.95, -22),
        espeak("en-gb-x-rp+m3", 155, 45, -20),
        None,
        """
        A: Brightwater Energy, Niamh speaking.
        C: Hello. I would like to switch to the Ember Saver tariff.
        A~: Sure. Do you have a smart meter?
        C: Yes, it was fitted last spring.
        A: Then the Ember Saver tariff is cheaper at night, and your direct debit will drop.
        C~: Perfect.
        A: Shall I also add Voltaic Green for renewable power?
        C: No, thank you.
        A: All done. Your new tariff starts on Monday.
        C: Thank you, Niamh.
        """,
        (
            "Brightwater Energy",
            "Ember Saver tariff",
            "Niamh",
            "smart meter",
            "Voltaic Green",
            "direct debit",
            "Helio Flex",
        ),
    ),
    Call(
        "q16-ked-nycm2",
        "held-back",
        "CV41190362",
        "RE273366019254",
        festival("ked_diphone", 0.95, -21),
        espeak("en-us-nyc+m2", 165, 45, -19),
        None,
        """
        A: Corvane Insurance, this is Tadhg.
        C: Hi. I want to upgrade to Harrier Premium cover.
        A: Happy to help. Please confirm your security PIN.
        C!: Six one five two.
        A: Thanks. Harrier Premium cover lowers your excess to one hundred pounds.
        C~: And my no claims bonus?
        A: Your no claims bonus stays the same.
        C~: Great.
        A: I will put you on hold to confirm the price.
        C: Okay, thank you Tadhg.
        """,
        (
            "Corvane Insurance",
            "Harrier Premium cover",
            "Tadhg",
            "PIN",
            "on hold",
            "no claims bonus",
            "Solent Saver",
        ),
    ),
    Call(
        "q17-wmdm4-slt",
        "held-back",
        "LT70025518",
        "AGT-90417",
        espeak("en-gb-x-gbcwmd+m4", 150, 45, -22),
        festival("cmu_us_slt_arctic_hts", 1.15, -19),
        ("brownnoise", -54),
        """
        A: Lumora Travel, Eilidh speaking.
        C: Hello. I booked a Skyline Flex fare to Lisbon.
        A: Thank you. What is your booking PIN?
        C!: Two eight eight four.
        A: I see it. The Skyline Flex fare lets you change the date for free.
        C~: Great. Can I use the Azurine lounge?
        A: Yes, the Azurine lounge is included.
        C~: Brilliant.
        A: Please stay on hold while I send the new ticket.
        C: Thank you, Eilidh.
        """,
        (
            "Lumora Travel",
            "Skyline Flex fare",
            "Eilidh",
            "PIN",
            "on hold",
            "Azurine lounge",
            "Kinvara Club",
        ),
    ),
]
ALL_CALLS = CALLS + DOMAIN_CALLS


def said(term: str, text: str) -> int:
    """How many times the script text says the term (its words in a row, any case)."""
    words = re.findall(r"[a-z']+", text.lower())
    run = re.findall(r"[a-z']+", term.lower())
    return sum(words[i : i + len(run)] == run for i in range(len(words) - len(run) + 1))


def parse_script(script: str) -> list[Line]:
    """Script lines as Line objects; an indented line continues the one above."""
    entries: list[list[str]] = []
    for raw in script.strip().splitlines():
        head = re.match(r"\s*([AC])([~+]?)(!?):\s+(.*)$", raw)
        if head:
            entries.append(list(head.groups()))
        elif entries and raw.strip():
            entries[-1][3] += " " + raw.strip()
        elif raw.strip():
            sys.exit(f"make_quality_corpus.py: bad script line {raw!r}")
    gap = {"": "turn", "~": "quick", "+": "pause"}
    return [
        Line("agent" if who == "A" else "customer", gap[mark], " ".join(text.split()), pin == "!")
        for who, mark, pin, text in entries
    ]


def gap_ms(call_id: str, index: int, kind: str) -> int:
    """A gap for line ``index`` of a call, spread over GAPS_MS[kind] by a hash (10 ms steps)."""
    lo, hi = GAPS_MS[kind]
    digest = hashlib.sha256(f"{call_id}/{index}".encode()).digest()
    steps = (hi - lo) // 10 + 1
    return lo + 10 * (int.from_bytes(digest[:4], "big") % steps)


# --------------------------------------------------------------------------------------------
# Building a call


TRACK = {"agent": "outbound", "customer": "inbound"}


def sound_edges(audio: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample of the clip at or above the sound threshold, once it is
    16-bit PCM encoded to mu-law (as measure() finds it on the track)."""
    pcm = np.clip(np.round(audio.astype(np.float64) * 32767), -32768, 32767).astype(np.int16)
    decoded = base.ulaw_decode(base.ulaw_encode(pcm))
    loud = np.flatnonzero(np.abs(decoded.astype(np.int32)) >= SOUND_THRESHOLD)
    if len(loud) == 0:
        sys.exit("make_quality_corpus.py: a clip has no sound above the threshold")
    return int(loud[0]), int(loud[-1]) + 1


def build_call(call: Call, workdir: Path) -> tuple[list[base.Clip], list[dict], int]:
    """Synthesize and place every line; return the clips, the controls and the length."""
    clips: list[base.Clip] = []
    last_end: dict[str, int] = {"inbound": 0, "outbound": 0}  # clip ends, per track
    sound_end = 0  # end of the last sound placed, on either track
    for index, line in enumerate(parse_script(call.script)):
        voice = call.agent if line.speaker == "agent" else call.customer
        audio = base.synthesize(
            line.speaker,
            line.text,
            workdir,
            index,
            voice=(voice.engine, voice.name),
            rate=voice.rate,
            pitch=voice.pitch,
            target_rms_dbfs=voice.level_dbfs,
        )
        first, last = sound_edges(audio)
        if index == 0:
            sound_start = at_ms(FIRST_SPEECH_MS)
        else:
            # gaps are counted from the end of the last sound rounded up to a whole ms, as
            # measure() reports it
            sound_start = -(-sound_end // MS) * MS + at_ms(gap_ms(call.id, index, line.gap))
        track = TRACK[line.speaker]
        start = max(sound_start - first, last_end[track])
        clips.append(base.Clip(track, line.speaker, line.text, start, audio, line.pin))
        last_end[track] = start + len(audio)
        sound_end = start + last
    last_ms = -(-sound_end // MS)
    controls = [
        {"atMs": START_MS, "action": "start"},
        {"atMs": last_ms + STOP_AFTER_MS, "action": "stop"},
    ]
    total = at_ms(last_ms + STOP_AFTER_MS + TAIL_AFTER_STOP_MS)
    total = -(-max(total, *last_end.values()) // FRAME) * FRAME
    return clips, controls, total


def at_ms(t_ms: int) -> int:
    return t_ms * MS


def line_noise(kind: str, rms_dbfs: float, total: int) -> dict[str, np.ndarray]:
    """Steady band-limited noise for both tracks (different stretches of one sox run), in 16-bit
    PCM units, with the first and last 20 ms frame left silent and 10 ms fades."""
    length = total - 2 * FRAME
    seconds = f"{2 * length / RATE + 0.5:.3f}"
    noise = base.sox_to_f32(
        base.SOX
        + ["-n", "-t", "f32", "-r", str(RATE), "-c", "1", "-"]
        + ["synth", seconds, kind, "highpass", "300", "lowpass", "3400"]
    ).astype(np.float64)
    noise = noise[RATE // 4 :]  # past the filters' start-up
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (10 * MS))
    out = {}
    for i, name in enumerate(("inbound", "outbound")):
        part = noise[i * length : (i + 1) * length]
        part = part / np.sqrt(np.mean(part**2)) * 10 ** (rms_dbfs / 20) * 32767 * fade
        track = np.zeros(total, np.float64)
        track[FRAME : FRAME + length] = part
        out[name] = track
    return out


def render_call(
    clips: list[base.Clip], total: int, noise: dict[str, np.ndarray] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The speech-only tracks and the tracks as written (speech plus noise), 16-bit PCM."""
    speech = base.render(clips, total)
    if noise is None:
        return speech, speech
    mixed = {
        name: np.clip(np.round(pcm.astype(np.float64) + noise[name]), -32768, 32767).astype(
            np.int16
        )
        for name, pcm in speech.items()
    }
    return speech, mixed


def active_level_dbfs(pcm: np.ndarray, segments: list[dict]) -> float:
    """Active-speech RMS (20 ms frames above -40 dBFS) of the segments, in dBFS."""
    frames = []
    for s in segments:
        x = pcm[at_ms(s["startMs"]) : at_ms(s["endMs"])].astype(np.float64) / 32768
        x = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
        frames.append(np.sqrt(np.mean(x**2, axis=1)))
    rms = np.concatenate(frames)
    active = rms[rms > 10 ** (-40 / 20)]
    return round(float(20 * np.log10(np.sqrt(np.mean(active**2)))), 1)


# --------------------------------------------------------------------------------------------
# Rules

DIGIT_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def text_problems(text: str) -> list[str]:
    problems = []
    words = re.findall(r"[a-z']+", text.lower())
    if re.search(r"\d", text):
        problems.append("numerals")
    if re.search(r"[@/&%$#]", text):
        problems.append("symbols")
    if "oh" in words:
        problems.append('"oh"')
    if re.search(r"\b(?:[A-Za-z]\.){2,}|\b(?:Mr|Mrs|Ms|Dr|St|Rd|Ave|etc|approx)\.", text):
        problems.append("abbreviation")
    if not re.match(r"[A-Z]", text) or text[-1] not in ".?!":
        problems.append("capitalisation or final punctuation")
    for sentence in re.split(r"[.?!]", text.lower()):
        for a, b in pairwise(re.findall(r"[a-z']+", sentence)):
            if a == b and a not in DIGIT_WORDS:
                problems.append(f"repeated word {a!r}")
    return problems


def turns(segments: list[dict]) -> int:
    return 1 + sum(a["track"] != b["track"] for a, b in pairwise(segments))


def validate_call(
    call: Call,
    lines: list[Line],
    segments: list[dict],
    controls: list[dict],
    duration_ms: int,
    encoded: dict[str, bytes],
) -> list[str]:
    problems: list[str] = []
    shortest, longest = (18_000, 35_000) if call.vocabulary else (30_000, 45_000)
    if not shortest <= duration_ms <= longest:
        problems.append(f"call lasts {duration_ms} ms, outside {shortest}-{longest} ms")
    if call.vocabulary:
        script = " ".join(line.text for line in lines)
        spoken = [t for t in call.vocabulary if said(t, script)]
        if len(spoken) < 4 or len(spoken) == len(call.vocabulary):
            problems.append("a domain call says fewer than four of its terms, or all of them")
    lengths = {len(data) for data in encoded.values()}
    if len(lengths) != 1 or lengths.pop() % FRAME:
        problems.append("tracks differ in length or are not whole 20 ms frames")
    for name, data in encoded.items():
        if data[-FRAME:] != bytes([base.ULAW_SILENCE]) * FRAME:
            problems.append(f"{name} does not end with mu-law silence")
    if call.agent.name == call.customer.name:
        problems.append("agent and customer have the same voice")
    actions = [(c["action"], c["atMs"]) for c in controls]
    last_end = max(s["endMs"] for s in segments)
    if actions[0] != ("start", START_MS) or [a for a, _ in actions] != ["start", "stop"]:
        problems.append(f"controls are not one start at {START_MS} ms and one stop")
    if actions[1][1] - last_end < 1500:
        problems.append("stop less than 1.5 s after the last segment")
    if duration_ms - actions[1][1] < 500:
        problems.append("less than 0.5 s of audio after the stop")
    if segments[0]["startMs"] < 1000:
        problems.append("speech starts before 1 s")
    if not all(s["transcribed"] for s in segments):
        problems.append("a segment is outside the start/stop window")
    if len(segments) != len(lines):
        problems.append("segments and script lines differ in number")
    if not 10 <= turns(segments) <= 16:
        problems.append(f"{turns(segments)} turns, not 10-16")
    # the two tracks never overlap; gaps as planned
    inbound = [s for s in segments if s["track"] == "inbound"]
    outbound = [s for s in segments if s["track"] == "outbound"]
    for a in inbound:
        for b in outbound:
            if a["startMs"] < b["endMs"] and b["startMs"] < a["endMs"]:
                problems.append(f"overlap: {a['text']!r} / {b['text']!r}")
    quick = answers = 0
    for (a, b), line in zip(pairwise(segments), lines[1:], strict=True):
        gap = b["startMs"] - a["endMs"]
        if line.gap == "pause":
            ok = a["track"] == b["track"] and 250 <= gap <= 600
        else:
            ok = a["track"] != b["track"] and 150 <= gap <= 1200
            answers += 1
            quick += gap <= 300
        if not ok:
            problems.append(f"{line.gap} gap of {gap} ms before {b['text']!r}")
    if not 1 <= quick <= answers * 0.4:
        problems.append(f"{quick} of {answers} turn gaps are 150-300 ms")
    # segment lengths: very short, about one second, medium; monologues 9-14 s in 2-4 parts
    length = [s["endMs"] - s["startMs"] for s in segments]
    if not any(n <= 700 for n in length):
        problems.append("no very short (about 0.5 s) segment")
    if not any(700 < n <= 1500 for n in length):
        problems.append("no segment of about one second")
    if sum(2000 <= n <= 5000 for n in length) < 3:
        problems.append("fewer than three segments of 2-5 s")
    for s, n in zip(segments, length, strict=True):
        if not 250 <= n <= 6000:
            problems.append(f"segment lasts {n} ms: {s['text']!r}")
    for group in monologues(segments, lines):
        span = group[-1]["endMs"] - group[0]["startMs"]
        if not 2 <= len(group) <= 4 or not 9000 <= span <= 14_000:
            problems.append(f"monologue of {len(group)} parts over {span} ms")
    for s in segments:
        for problem in text_problems(s["text"]):
            problems.append(f"text ({problem}): {s['text']!r}")
    return problems


def monologues(segments: list[dict], lines: list[Line]) -> list[list[dict]]:
    groups: list[list[dict]] = []
    for i, (segment, line) in enumerate(zip(segments, lines, strict=True)):
        if line.gap == "pause":
            if groups and groups[-1][-1] is segments[i - 1]:
                groups[-1].append(segment)
            else:
                groups.append([segments[i - 1], segment])
    return groups


def validate_corpus(entries: list[dict], timelines: list[dict], size: int) -> list[str]:
    problems = []
    splits = [e["split"] for e in entries if "vocabulary" not in e]
    if (splits.count("tuning"), splits.count("held-back")) != (8, 4):
        problems.append("not 8 tuning and 4 held-back general calls")
    domain_splits = [e["split"] for e in entries if "vocabulary" in e]
    if (domain_splits.count("tuning"), domain_splits.count("held-back")) != (3, 2):
        problems.append("not 3 tuning and 2 held-back domain calls")
    ids = [e["id"] for e in entries]
    people = [t["customerId"] for t in timelines] + [t["agentId"] for t in timelines]
    if len(set(ids)) != len(ids) or len(set(people)) != len(people):
        problems.append("call, customer or agent ids repeat")
    # a held-back voice is new to tuning: an espeak-ng voice+variant no tuning call uses, or a
    # festival voice at a rate no tuning call uses
    tuning = [v for c in ALL_CALLS if c.split == "tuning" for v in (c.agent, c.customer)]
    for c in ALL_CALLS:
        if c.split == "held-back":
            for v in (c.agent, c.customer):
                seen = {t.name if v.engine == "espeak-ng" else (t.name, t.rate) for t in tuning}
                if (v.name if v.engine == "espeak-ng" else (v.name, v.rate)) in seen:
                    problems.append(f"{c.id}: {v.name} at {v.rate} is also used in tuning")
    for c in ALL_CALLS:
        for v in (c.agent, c.customer):
            in_range = 0.85 <= v.rate <= 1.2 if v.engine == "festival" else 130 <= v.rate <= 195
            if not in_range or not -30 <= v.level_dbfs <= -13:
                problems.append(f"{c.id}: {v.name} rate or level out of range")
            if v.pitch is not None and not 30 <= v.pitch <= 70:
                problems.append(f"{c.id}: {v.name} pitch out of range")
        if c.noise is not None and not -62 <= c.noise[1] <= -48:
            problems.append(f"{c.id}: noise level out of range")
    calls_with_monologue = sum(
        any(line.gap == "pause" for line in parse_script(c.script)) for c in CALLS
    )
    if calls_with_monologue < 5:
        problems.append("fewer than five calls with a monologue")
    if size > MAX_CORPUS_BYTES:
        problems.append(f"corpus is {size} bytes, over {MAX_CORPUS_BYTES}")
    return problems


# --------------------------------------------------------------------------------------------


def check_tools() -> None:
    missing = [
        f"{exe} (Debian package: {pkg})"
        for exe, pkg in REQUIRED_TOOLS.items()
        if not shutil.which(exe)
    ]
    if not missing:
        listed = subprocess.run(
            ["festival", "--batch", "(print (voice.list))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        missing = [v for v in FESTIVAL_VOICES if v.removeprefix("voice_") not in listed]
    if missing:
        sys.exit(
            "make_quality_corpus.py: missing required tools or voices:\n  "
            + "\n  ".join(missing)
            + "\nInstall them with: apt-get install -y sox espeak-ng festival "
            + "festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"
        )


def make_call(call: Call) -> tuple[dict[str, bytes], dict, dict]:
    """Synthesize, render, encode, measure and check one call."""
    lines = parse_script(call.script)
    with tempfile.TemporaryDirectory(prefix="callscribe-quality-") as tmp:
        clips, controls, total = build_call(call, Path(tmp))
    noise = line_noise(call.noise[0], call.noise[1], total) if call.noise else None
    speech, written = render_call(clips, total, noise)
    encoded, decoded = base.encode_tracks(written)
    # boundaries come from the encoded speech (before any noise is added)
    _, decoded_speech = base.encode_tracks(speech) if noise else (encoded, decoded)

    duration_ms = total // MS
    segments = []
    for clip in sorted(clips, key=lambda c: c.start):
        start_ms, end_ms = base.measure(clip, decoded_speech[clip.track])
        segments.append(
            {
                "track": clip.track,
                "kind": clip.kind,
                "startMs": start_ms,
                "endMs": end_ms,
                "text": clip.text,
                "transcribed": controls[0]["atMs"] <= start_ms and end_ms <= controls[1]["atMs"],
                "containsPin": clip.contains_pin,
            }
        )
    problems = validate_call(call, lines, segments, controls, duration_ms, encoded)
    # the measured boundaries are the sound of the clip itself, nothing of its neighbours
    for clip, seg in zip(sorted(clips, key=lambda c: c.start), segments, strict=True):
        first, last = sound_edges(clip.audio)
        planned = ((clip.start + first) // MS, -(-(clip.start + last) // MS))
        if (seg["startMs"], seg["endMs"]) != planned:
            problems.append(f"measured {seg['startMs']}-{seg['endMs']} ms, placed {planned}")
    print(f"{call.id}  ({call.split})")
    for seg in segments:
        flags = "P" if seg["containsPin"] else "-"
        print(
            f"  {seg['startMs']:>6}-{seg['endMs']:>6} ms {seg['endMs'] - seg['startMs']:>5}  {flags} "
            f"{seg['kind']:<8} {seg['text']}"
        )
    if problems:
        sys.exit(
            f"make_quality_corpus.py: call {call.id} breaks the corpus rules:\n  "
            + "\n  ".join(problems)
        )
    timeline = {
        "sampleRate": RATE,
        "encoding": "audio/x-mulaw",
        "durationMs": duration_ms,
        "customerId": call.customer_id,
        "agentId": call.agent_id,
        "controls": controls,
        "segments": segments,
    }
    levels = {
        kind: active_level_dbfs(
            decoded_speech[TRACK[kind]], [s for s in segments if s["kind"] == kind]
        )
        for kind in ("agent", "customer")
    }
    entry = {
        "id": call.id,
        "split": call.split,
        **{
            kind: {
                "engine": v.engine,
                "voice": v.name,
                "rate": v.rate,
                "pitch": v.pitch,
                "levelDbfs": levels[kind],
            }
            for kind, v in (("agent", call.agent), ("customer", call.customer))
        },
        "noiseDbfs": call.noise[1] if call.noise else None,
        "durationMs": duration_ms,
        "turns": turns(segments),
    }
    if call.vocabulary:
        script = " ".join(line.text for line in lines)
        entry["vocabulary"] = list(call.vocabulary)
        entry["termsSaid"] = {t: said(t, script) for t in call.vocabulary if said(t, script)}
    print(
        f"  {duration_ms} ms, {entry['turns']} turns, {len(segments)} segments; active speech "
        f"agent {levels['agent']} dBFS (target {call.agent.level_dbfs}), customer "
        f"{levels['customer']} dBFS (target {call.customer.level_dbfs})"
        + (f"; {call.noise[0]} {call.noise[1]} dBFS" if call.noise else "")
    )
    return encoded, timeline, entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory (default: callscribe/samples/quality in this repository)",
    )
    args = parser.parse_args(argv)
    check_tools()

    made = [make_call(call) for call in ALL_CALLS]
    files: dict[Path, bytes] = {}
    for call, (encoded, timeline, _) in zip(ALL_CALLS, made, strict=True):
        for name, data in encoded.items():
            files[Path(call.id) / f"{name}.ulaw"] = data
        files[Path(call.id) / "timeline.json"] = (json.dumps(timeline, indent=2) + "\n").encode()
    corpus = {"calls": [entry for _, _, entry in made]}
    files[Path("corpus.json")] = (json.dumps(corpus, indent=2) + "\n").encode()
    size = sum(len(data) for data in files.values())
    problems = validate_corpus(corpus["calls"], [t for _, t, _ in made], size)
    if problems:
        sys.exit("make_quality_corpus.py: the corpus breaks its rules:\n  " + "\n  ".join(problems))

    for path, data in files.items():
        (args.out / path).parent.mkdir(parents=True, exist_ok=True)
        (args.out / path).write_bytes(data)
    print(f"wrote {args.out}: {len(ALL_CALLS)} calls, {len(files)} files, {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
