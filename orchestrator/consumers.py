from channels.generic.websocket import AsyncJsonWebsocketConsumer

SYSTEM_GROUP = "system"


class SystemConsumer(AsyncJsonWebsocketConsumer):
    """System news (worker pings) for any signed-in user, as JSON."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(SYSTEM_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(SYSTEM_GROUP, self.channel_name)

    async def system_event(self, message):
        await self.send_json(message["event"])
