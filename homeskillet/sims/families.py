"""Task families for rehearsal: prompts with known right answers, for a teacher simulator to answer
and for distillation to be measured on honestly.

``triage``: one-word support-ticket routing (billing, refund, outage, login, shipping, cancel).
Each label has twelve wordings written apart (not one template with a swapped word) and entity
pools (products, people, places, amounts). A seeded draw takes training prompts from the first
eight wordings with the first half of every entity pool; held-out prompts use only the other half
of the entities, and half of them use the four wordings never trained on (group
``unseen_wording``). So no held-out prompt repeats a training prompt's entities, and half of them
repeat none of its wording either.
"""

from __future__ import annotations

import random

import msgspec

from ..distill.capture import pair_id
from ..wire import DistillPair

__all__ = ["LABELS", "SYSTEM", "Example", "as_pairs", "triage"]

SYSTEM = ("Route the support ticket to one team. Answer with one word: "
          "billing, refund, outage, login, shipping or cancel.")
LABELS = ("billing", "refund", "outage", "login", "shipping", "cancel")

_WORDINGS: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged {amount} twice for my {product} subscription this month.",
        "Why does my invoice for {product} show {amount} when my plan costs less?",
        "{name} here, the card on file got billed {amount} without any explanation.",
        "Can someone explain the extra {amount} line on my {product} statement?",
        "My company in {city} keeps getting invoices with the wrong VAT number.",
        "The payment for {product} went through but my account still says overdue.",
        "How do I change the credit card that {product} charges every month?",
        "There's a mystery fee of {amount} on the bill I received today.",
        "Our accountant in {city} needs an itemised receipt for the {amount} payment.",
        "You raised the price of {product} and nobody told me, now I owe {amount}.",
        "Hello, {name} again: the prorated amount on this invoice looks miscalculated.",
        "Bank statement shows a pending authorisation of {amount} from you that I never approved.",
    ),
    "refund": (
        "I want my {amount} back for the {product} order, it never worked.",
        "Please return the money for the {product} I sent back last week.",
        "{name} asking: how long until the refund of {amount} reaches my card?",
        "The {product} arrived broken, I'd like a full reimbursement.",
        "You promised a refund of {amount} ten days ago and I still see nothing.",
        "Can I get my money back if I'm not happy with {product}?",
        "I returned the parcel to your {city} warehouse, where is my refund?",
        "Cancelled within the trial but got charged {amount}, please reverse it.",
        "Requesting reimbursement for the {product} upgrade I never used.",
        "My daughter bought {product} by mistake, we need the {amount} returned.",
        "The replacement {product} is faulty as well; just refund me instead please.",
        "Chargeback or refund? Either way I expect the {amount} back on my account.",
    ),
    "outage": (
        "{product} is down for everyone in our {city} office right now.",
        "Your service returns error 503 every time we open {product}.",
        "Nothing loads since this morning, is {product} having an outage?",
        "{name} from the ops team: the API has been timing out for an hour.",
        "All our dashboards in {product} are blank and the status page says nothing.",
        "The servers seem unreachable from {city}, our whole team is blocked.",
        "Is there a known incident? {product} keeps crashing on startup for all users.",
        "Website completely unresponsive, pages hang and then fail.",
        "Sync stopped working across every device at once about twenty minutes ago.",
        "Our integration with {product} fails with connection refused since the update.",
        "Total blackout on your platform in {city}; nobody can get any data.",
        "Every request to the service just spins until it errors out, please fix.",
    ),
    "login": (
        "I can't sign in to {product}, it says my password is wrong.",
        "{name} here, the two-factor code never arrives so I'm locked out.",
        "My account got locked after too many attempts, how do I get back in?",
        "Password reset email for {product} is not reaching my inbox.",
        "The single sign-on with our {city} directory rejects my credentials.",
        "I forgot my username and can't access the account anymore.",
        "Login page keeps looping back to itself after I enter my details.",
        "Authenticator app was on my old phone, now I can't log into {product}.",
        "It says my session expired every time I try to authenticate.",
        "{name} cannot access the admin panel, the credentials were changed.",
        "Security question answers aren't accepted when I try to recover the account.",
        "After the new verification step I'm stuck outside my own profile.",
    ),
    "shipping": (
        "Where is my {product}? The tracking hasn't moved in a week.",
        "{name} asking when the order to {city} will finally be delivered.",
        "The courier says the parcel was delivered but nothing arrived.",
        "Can you ship the {product} to a different address in {city}?",
        "My package is stuck in customs, what should I do?",
        "Delivery date keeps getting pushed back for my {product} order.",
        "The box arrived with only half of the items I ordered.",
        "How much does express postage cost to {city}?",
        "Tracking number for the {product} shows as invalid on the carrier's site.",
        "I was not home and the driver took the parcel back, can it be redelivered?",
        "Order placed two weeks ago still says preparing for dispatch.",
        "The wrong {product} was sent to me; the label has someone else's name.",
    ),
    "cancel": (
        "Please cancel my {product} subscription at the end of this period.",
        "{name} wants to close the account and stop all future renewals.",
        "How do I terminate my {product} plan before it renews?",
        "I'd like to end my membership, we no longer need it in {city}.",
        "Stop my subscription now, I don't want to be charged again.",
        "We're moving to another vendor, please deactivate our {product} seats.",
        "Unsubscribe me from the premium tier effective immediately.",
        "Is there a way to pause or cancel {product} without a penalty?",
        "Our {city} branch is closing, cancel every licence it holds.",
        "Delete my account and discontinue the service, thanks.",
        "I signed up for {product} by accident, please cancel it before the trial ends.",
        "Don't renew my contract next month; I'm done with the service.",
    ),
}

_ENTITIES: dict[str, tuple[str, ...]] = {
    "product": ("CloudDrive", "PhotoVault", "TeamChat", "Ledgerly", "FitTrack", "MailPro", "StreamBox",
                "NoteNest", "CodeHub", "PayFlow", "MapMate", "DocuSign-Lite"),
    "name": ("Maria", "Kenji", "Olu", "Priya", "Lukas", "Fatima", "Diego", "Ana", "Tomasz", "Mei", "Samir", "Ingrid"),
    "city": ("Lisbon", "Osaka", "Lagos", "Pune", "Hamburg", "Cairo", "Bogota", "Porto", "Krakow", "Shenzhen",
             "Amman", "Bergen"),
    "amount": ("$19.99", "$240", "€35", "$7.50", "£120", "$1,099", "€4.99", "$62.10", "£15", "$330", "€89",
               "$12.75"),
}


class Example(msgspec.Struct, frozen=True, kw_only=True):
    prompt: str
    answer: str
    group: str  # "train" | "seen_wording" | "unseen_wording"


def as_pairs(examples: list[Example], tenant: str, student: str, *, confidence: float = 0.97) -> list[DistillPair]:
    """Examples as captured pairs, as if a sure teacher had answered each one right."""
    return [DistillPair(pair_id=pair_id(tenant, student, e.prompt), tenant=tenant, covenant="triage", student=student,
                        query_id=f"q{i}", fragment_hash=e.prompt, prompt=e.prompt, teacher_model="teacher",
                        teacher_pool="openrouter/teacher", teacher_text=e.answer, teacher_confidence=confidence)
            for i, e in enumerate(examples)]


def _fill(text: str, rng: random.Random, half: int) -> str:
    pick = {k: (v[: len(v) // 2] if half == 0 else v[len(v) // 2:]) for k, v in _ENTITIES.items()}
    return text.format(**{k: rng.choice(v) for k, v in pick.items()})


def triage(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``n_train`` training tickets and ``n_heldout`` held-out ones (half on unseen wordings), labels balanced."""
    rng = random.Random(seed)
    # Distinct training prompts per label, drawn without replacement (repeats only past the pool's size).
    pools: dict[str, list[str]] = {}
    for label in LABELS:
        distinct = sorted({_fill(w, rng, 0) for w in _WORDINGS[label][:8] for _ in range(12)})
        rng.shuffle(distinct)
        pools[label] = distinct
    train = [Example(prompt=pools[LABELS[i % len(LABELS)]][(i // len(LABELS)) % len(pools[LABELS[i % len(LABELS)]])],
                     answer=LABELS[i % len(LABELS)], group="train") for i in range(n_train)]
    held: list[Example] = []
    for i in range(n_heldout):
        label = LABELS[i % len(LABELS)]
        unseen = (i // len(LABELS)) % 2 == 1
        # A seen wording must carry entities, or a held-out ticket could repeat a training one word for word.
        wording = rng.choice(_WORDINGS[label][8:] if unseen else [w for w in _WORDINGS[label][:8] if "{" in w])
        held.append(Example(prompt=_fill(wording, rng, 1), answer=label,
                            group="unseen_wording" if unseen else "seen_wording"))
    return train, held
