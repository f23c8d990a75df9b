"""UserSignup (from the product docs): create the user, mail a secret link, wait for the click.

`run` executes once per workflow id (the user id); `click` is a shared handler anyone holding the
link calls, and it resolves the durable promise `run` waits on. Set KEYSTATE_SIGNUP_OUTBOX to a
file path to have every mailed secret appended there (one per line), e.g. for tests.
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

from keystate import Workflow, WorkflowContext, WorkflowSharedContext

log = logging.getLogger("examples.signup")

user_signup = Workflow("UserSignup")


class User(BaseModel):
    name: str
    email: str


def create_user(user_id: str, user: User) -> bool:
    """Stands for the user database; the user id makes a repeated create harmless."""
    log.info("created user %s (%s)", user_id, user.name)
    return True


def send_email_with_link(email: str, secret: str) -> None:
    """Stands for the mail provider: logs the link, and appends the secret to the outbox if set."""
    log.info("mail to %s: confirm your address at https://example.com/confirm?secret=%s", email, secret)
    outbox = os.environ.get("KEYSTATE_SIGNUP_OUTBOX")
    if outbox:
        with open(outbox, "a", encoding="utf-8") as f:
            f.write(secret + "\n")


@user_signup.main()
async def run(ctx: WorkflowContext, user: User) -> bool:
    await ctx.run("create", create_user, ctx.key(), user)
    secret = str(ctx.uuid())
    await ctx.run("mail", send_email_with_link, user.email, secret)
    clicked = await ctx.promise("email-link-clicked", type_hint=str).value()
    return clicked == secret


@user_signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("email-link-clicked", type_hint=str).resolve(secret)
