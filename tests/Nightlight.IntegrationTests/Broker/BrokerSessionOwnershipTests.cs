using Nightlight.Tests.Support;

namespace Nightlight.Tests.Broker;

/// <summary>
/// With identities on, a client id belongs to one identity: device devA cannot take the client id of device devA-2 or
/// of a server, so it can neither kick them off nor read their session (issue 32). Mosquitto has no such rule, so this
/// runs against <c>nightlight broker</c> alone.
/// </summary>
public sealed class BrokerSessionOwnershipTests() : BrokerContract(BrokerKind.Nightlight, Wire.V311)
{
    static readonly BrokerSetup Identities = new() { Devices = ["devA", "devA-2"], Servers = ["backend"] };

    static async Task<Packet> TryConnectAsync(BrokerUnderTest broker, Wire wire, string clientId, string user)
    {
        await using var client = await WireClient.OpenAsync(broker.Port, wire, $"{user} as {clientId}");
        return await client.ConnectAsync(wire.Connect(clientId, userName: user, password: broker.Secret(user)));
    }

    static bool IsRefusal(Packet connack, Wire wire) =>
        wire.IsV5 ? connack.ReasonCode is 0x85 or 0x87 : connack.ReasonCode is 0x02 or 0x05;

    [Theory]
    [InlineData(4, "devA-2nightlight_client")]
    [InlineData(4, "devA-2")]
    [InlineData(4, "devA-2-sensor")]
    [InlineData(4, "backendnightlight_server")]
    [InlineData(4, "nightlight_server-1")]
    [InlineData(4, "devAnightlight_server")]
    [InlineData(4, "devA-nightlight_server")]
    [InlineData(5, "devA-2nightlight_client")]
    [InlineData(5, "backendnightlight_server")]
    [InlineData(5, "devA-nightlight_server")]
    public async Task A_device_cannot_connect_with_a_client_id_of_another_identity(int version, string clientId)
    {
        var wire = new Wire(version);
        await using var broker = await StartBrokerAsync(Identities);
        var connack = await TryConnectAsync(broker, wire, clientId, "devA");
        // 3.1.1: 0x02 identifier rejected or 0x05 not authorised; 5: 0x85 client identifier not valid or 0x87.
        Assert.True(IsRefusal(connack, wire), $"devA took client id {clientId}: {connack}");
    }

    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task Each_identity_connects_with_its_own_client_ids(int version)
    {
        var wire = new Wire(version);
        await using var broker = await StartBrokerAsync(Identities);
        foreach (var (clientId, user) in new[] { ("devA", "devA"), ("devAnightlight_client", "devA"), ("devA-2nightlight_client", "devA-2"),
            ("backendnightlight_server", "backend") })
        {
            var connack = await TryConnectAsync(broker, wire, clientId, user);
            Assert.True(connack.ReasonCode == 0, $"{user} could not use its client id {clientId}: {connack}");
        }
    }

    [Fact]
    public async Task A_refused_takeover_leaves_the_owner_connected_with_its_queued_commands()
    {
        await using var broker = await StartBrokerAsync(Identities);
        var owner = "devA-2nightlight_client";
        await using (var device = await WireClient.ConnectAsync(broker.Port, Wire, owner, clean: false, userName: "devA-2", password: broker.Secret("devA-2")))
        {
            await device.SubscribeAsync(1, "devA-2/commands", 1);
            await device.DisconnectAsync();
        }
        await using var server = await WireClient.ConnectAsync(broker.Port, Wire, "backendnightlight_server", userName: "backend", password: broker.Secret("backend"));
        await server.PublishAsync("devA-2/commands", "{\"led_on\": true}", 1, packetId: 1);

        // devA tries to take the session over and read devA-2's commands.
        await using (var thief = await WireClient.OpenAsync(broker.Port, Wire, "thief"))
        {
            var connack = await thief.ConnectAsync(Wire.Connect(owner, clean: false, userName: "devA", password: broker.Secret("devA")));
            Assert.True(IsRefusal(connack, Wire), $"devA took {owner}: {connack}");
            await thief.ExpectClosedAsync();
        }

        await using var back = await WireClient.ConnectAsync(broker.Port, Wire, owner, clean: false, sessionPresent: true, userName: "devA-2", password: broker.Secret("devA-2"));
        await back.AcknowledgeAsync(await back.ExpectPublishAsync("devA-2/commands", "{\"led_on\": true}", 1));
    }
}
