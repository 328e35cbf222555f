import unicodedata

from django.conf import settings
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.http import content_disposition_header
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from agentpost.api import ApiError, Base64Field, OrgAPIView, StrictSerializer, paginate
from agentpost.mail import services
from agentpost.mail.models import Attachment, Inbox, Message


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character or a Unicode line separator,
    which could break or smuggle a mail header."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


LOCAL_PART_PATTERN = r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$"


class InboxIn(StrictSerializer):
    local_part = serializers.RegexField(
        LOCAL_PART_PATTERN,
        help_text=(
            "The part before the @; letters, digits, dot, dash, plus, underscore."
        ),
    )
    display_name = serializers.CharField(max_length=200, required=False, default="")

    def to_internal_value(self, data):
        if isinstance(data, dict) and isinstance(data.get("local_part"), str):
            data = {**data, "local_part": data["local_part"].lower()}
        return super().to_internal_value(data)


class InboxOut(serializers.ModelSerializer):
    class Meta:
        model = Inbox
        fields = ["id", "address", "display_name", "created_at"]


class AttachmentIn(StrictSerializer):
    filename = serializers.CharField(max_length=1000, allow_blank=True)
    content_type = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$",
        max_length=255,
        required=False,
        default="application/octet-stream",
        error_messages={"invalid": "Not a media type such as text/plain."},
    )
    content = Base64Field(help_text="The file, base64-encoded.", allow_blank=True)

    def validate_content(self, value: bytes) -> bytes:
        if len(value) > settings.ATTACHMENT_MAX_BYTES:
            raise serializers.ValidationError(
                f"Larger than {settings.ATTACHMENT_MAX_BYTES} bytes."
            )
        return value


class SendIn(StrictSerializer):
    to = serializers.ListField(
        child=serializers.EmailField(max_length=254), min_length=1, max_length=50
    )
    cc = serializers.ListField(
        child=serializers.EmailField(max_length=254), required=False, default=list
    )
    bcc = serializers.ListField(
        child=serializers.EmailField(max_length=254), required=False, default=list
    )
    subject = serializers.CharField(max_length=998, allow_blank=True, default="")
    text = serializers.CharField(
        allow_blank=True, required=False, default="", trim_whitespace=False
    )
    html = serializers.CharField(
        allow_blank=True, required=False, default="", trim_whitespace=False
    )
    attachments = serializers.ListField(
        child=AttachmentIn(), required=False, default=list, max_length=50
    )

    def validate(self, data):
        if not data["text"] and not data["html"]:
            raise serializers.ValidationError({"text": ["Give text, html or both."]})
        recipients = len(data["to"]) + len(data["cc"]) + len(data["bcc"])
        if recipients > settings.MESSAGE_MAX_RECIPIENTS:
            raise serializers.ValidationError(
                {
                    "to": [
                        f"At most {settings.MESSAGE_MAX_RECIPIENTS} recipients in all."
                    ]
                }
            )
        if has_control_characters(data["subject"]):
            raise serializers.ValidationError(
                {"subject": ["No line breaks or control characters allowed."]}
            )
        return data


class AttachmentOut(serializers.ModelSerializer):
    class Meta:
        model = Attachment
        fields = [
            "id",
            "filename",
            "content_type",
            "size_bytes",
            "sha256",
            "inline",
            "content_id",
        ]


class MessageOut(serializers.ModelSerializer):
    inbox_id = serializers.CharField()
    attachments = AttachmentOut(many=True)
    from_ = serializers.CharField(source="from_address")

    class Meta:
        model = Message
        fields = [
            "id",
            "inbox_id",
            "direction",
            "status",
            "from_",
            "to",
            "cc",
            "bcc",
            "subject",
            "text",
            "html",
            "headers",
            "size_bytes",
            "error",
            "created_at",
            "sent_at",
            "attachments",
        ]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["from"] = data.pop("from_")
        return data


class MessageSummaryOut(MessageOut):
    class Meta(MessageOut.Meta):
        fields = [
            f for f in MessageOut.Meta.fields if f not in ("text", "html", "headers")
        ]


def visible_messages(org):
    # Held messages are stored but not shown until the org's limit allows them.
    return Message.objects.filter(org=org).exclude(status=Message.Status.HELD)


class InboxListView(OrgAPIView):
    @extend_schema(responses=InboxOut(many=True))
    def get(self, request):
        return paginate(request, Inbox.objects.filter(org=self.org), InboxOut)

    @extend_schema(request=InboxIn, responses={201: InboxOut})
    def post(self, request):
        data = InboxIn.validate_input(request.data)
        try:
            inbox = services.create_inbox(
                org=self.org,
                local_part=data["local_part"],
                display_name=data["display_name"],
            )
        except services.InboxTaken:
            raise ApiError(409, "conflict", "That address is taken.") from None
        return Response(InboxOut(inbox).data, status=201)


class InboxMessagesView(OrgAPIView):
    def get_inbox(self, inbox_id: str) -> Inbox:
        return get_object_or_404(Inbox, pk=inbox_id, org=self.org)

    @extend_schema(responses=MessageSummaryOut(many=True))
    def get(self, request, inbox_id: str):
        inbox = self.get_inbox(inbox_id)
        queryset = (
            visible_messages(self.org)
            .filter(inbox=inbox)
            .prefetch_related("attachments")
        )
        return paginate(request, queryset, MessageSummaryOut)

    @extend_schema(request=SendIn, responses={202: MessageOut})
    def post(self, request, inbox_id: str):
        inbox = self.get_inbox(inbox_id)
        data = SendIn.validate_input(request.data)
        message = services.send_message(
            org=self.org,
            inbox=inbox,
            to=data["to"],
            cc=data["cc"],
            bcc=data["bcc"],
            subject=data["subject"],
            text=data["text"],
            html=data["html"],
            attachments=[
                services.NewAttachment(
                    filename=a["filename"],
                    content_type=a["content_type"],
                    content=a["content"],
                )
                for a in data["attachments"]
            ],
            now=timezone.now(),
        )
        message.refresh_from_db()
        return Response(MessageOut(message).data, status=202)


class MessageView(OrgAPIView):
    @extend_schema(responses=MessageOut)
    def get(self, request, message_id: str):
        message = get_object_or_404(visible_messages(self.org), pk=message_id)
        return Response(MessageOut(message).data)


class AttachmentFileView(OrgAPIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, message_id: str, attachment_id: str):
        attachment = get_object_or_404(
            Attachment,
            pk=attachment_id,
            message__in=visible_messages(self.org).filter(pk=message_id),
        )
        try:
            handle = attachment.file.open("rb")
        except FileNotFoundError:
            raise ApiError(
                404, "not_found", "The attachment's file is missing."
            ) from None
        response = FileResponse(handle, content_type="application/octet-stream")
        # Served as a download of opaque bytes, whatever type the sender claimed,
        # so a hostile HTML "attachment" cannot run in our origin.
        response["Content-Disposition"] = content_disposition_header(
            True, attachment.filename
        )
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response["AgentPost-Content-Type"] = attachment.content_type
        response["Content-Length"] = str(attachment.size_bytes)
        return response
