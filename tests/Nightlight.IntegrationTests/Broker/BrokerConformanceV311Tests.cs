using Nightlight.Tests.Support;

namespace Nightlight.Tests.Broker;

/// <summary>MQTT 3.1.1: the shared scenarios in 3.1.1 packets (compared byte for byte), and what only 3.1.1 has.</summary>
public abstract class BrokerConformanceV311Tests(BrokerKind kind) : BrokerConformanceTests(kind, Wire.V311)
{
    [Fact]
    public async Task A_zero_length_client_id_is_refused_with_a_persistent_session_and_accepted_with_a_clean_one()
    {
        await using var broker = await StartBrokerAsync();
        await using (var persistent = await OpenAsync(broker, "empty, clean 0"))
        {
            await persistent.SendAsync(Wire.Connect("", clean: false));
            await persistent.ExpectAsync(Wire.ConnAck311(0x02));
            await persistent.ExpectClosedAsync();
        }
        await using var clean = await ConnectAsync(broker, "");
        await clean.SubscribeAsync(1, "anon/#", 1);
        await clean.DisconnectAsync();
    }

    [Fact]
    public async Task An_unknown_protocol_level_is_refused_with_return_code_1()
    {
        await using var broker = await StartBrokerAsync();
        await using var client = await OpenAsync(broker, "level 6");
        var connect = Wire.V311.Connect("future");
        connect[2 + 6] = 6;
        await client.SendAsync(connect);
        await client.ExpectAsync(Wire.ConnAck311(0x01));
        await client.ExpectClosedAsync();
    }

    [Fact]
    public async Task A_clean_session_discards_what_the_persistent_one_had()
    {
        await using var broker = await StartBrokerAsync();
        await using (var client = await ConnectPersistentAsync(broker, "forgetful", sessionPresent: false))
        {
            await client.SubscribeAsync(1, "kept/#", 1);
            await client.DisconnectAsync();
        }
        await using (var clean = await ConnectAsync(broker, "forgetful", clean: true))
        {
            await clean.DisconnectAsync();
        }
        await using var pub = await ConnectAsync(broker, "pub");
        await pub.PublishAsync("kept/x", "nobody", 1);
        await using var again = await ConnectPersistentAsync(broker, "forgetful", sessionPresent: false);
        await again.ExpectNothingAsync(Quiet);
    }
}

public sealed class MosquittoConformanceV311Tests() : BrokerConformanceV311Tests(BrokerKind.Mosquitto);

/// <summary>
/// Our broker, and the scenarios where Mosquitto 2.0.11 legitimately differs (a feature it lacks, a persistence it does
/// not have); those run only here, since CI runs every test it has and skips none.
/// </summary>
public sealed class NightlightConformanceV311Tests() : BrokerConformanceV311Tests(BrokerKind.Nightlight)
{
    [Fact]
    public Task Overlapping_subscriptions_deliver_one_message_at_the_highest_qos_or_one_per_subscription() =>
        OverlappingSubscriptionsAsync();
}
