from django.apps import AppConfig


class MailConfig(AppConfig):
    name = "agentpost.mail"
    label = "mail"
    verbose_name = "Mail"
